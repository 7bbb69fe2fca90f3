"""
Status and metrics of a running gateway: C{[status]} C{/healthz} and
Prometheus C{/metrics} (L{imgateway.status.web}), what is counted
(L{imgateway.status.metrics}), the health checks
(L{imgateway.status.health}) and JSON logs (L{imgateway.status.logs}).
"""
