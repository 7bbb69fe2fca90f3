"""
What the C{[status]} counters cost on the hot path, per call, in this
process: the calls a message, a presence, a login and a limit refusal
make (L{imgateway.status.metrics.GatewayMetrics}), beside the cost of the
L{Deferred} callback a message's outcome is counted with. Prints one JSON
line. A benchmark, not a test: nothing asserts a time.

    .venv/bin/python bench/status_cost.py

Compare the per-message figure with C{server_cpu_us_per_delivery} of
C{native_load.py} (bench/README.md, "[status] counters").
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.defer import succeed

from imgateway.core.errors import DeliveryStatus
from imgateway.status.metrics import GatewayMetrics


def perCall(statement: Any, number: int = 200_000) -> float:
    """
    @return: Microseconds per call of C{statement}, the best of 5 runs.
    """
    return min(timeit.repeat(statement, number=number, repeat=5)) / number * 1e6


def main() -> None:
    metrics = GatewayMetrics()

    class Session:
        closed = False

    session = Session()
    delivered = DeliveryStatus.DELIVERED

    def withOutcome() -> None:
        succeed(delivered).addBoth(metrics.messageOutcome)

    def without() -> None:
        succeed(delivered)

    figures = {
        "bench": "status_cost",
        "message_outcome_us": round(perCall(lambda: metrics.messageOutcome(delivered)), 3),
        "message_counted_on_deferred_us": round(perCall(withOutcome) - perCall(without), 3),
        "presence_us": round(perCall(metrics.presencePublished), 3),
        "limit_hit_us": round(perCall(lambda: metrics.limitHit("max_queue")), 3),
        "login_us": round(perCall(lambda: metrics.loggedIn("native", "PLAIN", session), 20_000), 3),  # type: ignore[arg-type]
        "python": sys.version.split()[0],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
