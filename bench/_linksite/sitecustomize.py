"""
The server side of C{bench/multihost.py --counts}, loaded by Python at
start-up (C{sitecustomize}) when this folder is on C{PYTHONPATH}, and
active only when C{$IMGATEWAY_LINK_COUNTS} names a folder. In each server
process it counts, from the moment the reactor runs:

 - C{iterations}: the reactor's turns (C{doIteration}), C{zero_timeout}
   of them with a timeout of 0 (a turn that was asked for before the
   process could sleep: a C{callLater(0)}, or writers kept for the end of
   the turn), C{polls_empty} polls that returned no event;
 - C{tls_flush_later}: the flushes Twisted's TLS transport put off to the
   next turn (C{_AggregateSmallWrites}' C{callLater(0)});
 - C{tls_app_writes} and C{tls_app_bytes}: what reached a TLS connection
   to be encrypted (C{TLSMemoryBIOProtocol._write}), C{tls_records_out}
   the records that made (one per 16 KiB), C{tls_records_in} the
   records read (their headers parsed in the bytes read);
 - C{tcp_sends}, C{tcp_reads}: Twisted's TCP C{writeSomeData} and
   C{doRead} calls, C{tcp_sends_tls} and C{tcp_reads_tls} those of
   connections under TLS;

and, each time it receives C{SIGUSR2}, appends them as one JSON line to
C{<folder>/<pid>.jsonl} (the benchmark signals at the edges of its window
and takes the difference). The wrappers cost a little CPU: a run with
C{--counts} counts, it does not time. It changes nothing else in the
process.
"""

import json
import os
import signal
import sys
import threading
import time
from typing import Any

_FOLDER = os.environ.get("IMGATEWAY_LINK_COUNTS") or ""

if _FOLDER:
    _counts: dict[str, int] = dict.fromkeys(
        (
            "iterations", "zero_timeout", "polls_empty", "tls_flush_later", "tls_app_writes", "tls_app_bytes",
            "tls_records_out", "tls_records_in", "tcp_sends", "tcp_reads", "tcp_sends_tls", "tcp_reads_tls",
        ),
        0,
    )  # fmt: skip

    def _snapshot(signum: int = 0, frame: object = None) -> None:
        line = json.dumps({"t": time.monotonic(), **_counts})
        with open(os.path.join(_FOLDER, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(line + "\n")

    def _install() -> None:
        from twisted.internet import tcp
        from twisted.protocols import tls

        reactor: Any = sys.modules["twisted.internet.reactor"]
        counts = _counts
        doIteration = reactor.doIteration
        poller = reactor._poller

        def countedIteration(timeout: Any) -> None:
            counts["iterations"] += 1
            if timeout == 0:
                counts["zero_timeout"] += 1
            doIteration(timeout)

        class Poller:
            def poll(self, *args: Any) -> Any:
                events = poller.poll(*args)
                if not events:
                    counts["polls_empty"] += 1
                return events

            def __getattr__(self, name: str) -> Any:
                return getattr(poller, name)

        reactor.doIteration = countedIteration
        reactor._poller = Poller()

        scheduledFlush = tls._AggregateSmallWrites._scheduledFlush

        def countedScheduledFlush(self: Any) -> None:
            counts["tls_flush_later"] += 1
            scheduledFlush(self)

        write = tls.TLSMemoryBIOProtocol._write

        def countedWrite(self: Any, data: bytes) -> None:
            counts["tls_app_writes"] += 1
            counts["tls_app_bytes"] += len(data)
            counts["tls_records_out"] += (len(data) + 16383) // 16384
            write(self, data)

        dataReceived = tls.TLSMemoryBIOProtocol.dataReceived

        def countedDataReceived(self: Any, data: bytes) -> None:
            # The records' headers: 5 bytes, the length in the last two.
            state = self.__dict__.setdefault("_countsRecord", [0, b""])
            i, n = 0, len(data)
            while i < n:
                if state[0]:
                    step = min(state[0], n - i)
                    state[0] -= step
                    i += step
                    continue
                head = state[1] + data[i : i + 5 - len(state[1])]
                i += 5 - len(state[1])
                if len(head) < 5:
                    state[1] = head
                    break
                state[1] = b""
                state[0] = int.from_bytes(head[3:5], "big")
                counts["tls_records_in"] += 1
            dataReceived(self, data)

        def underTLS(connection: Any) -> bool:
            return isinstance(connection.protocol, tls.TLSMemoryBIOProtocol)

        writeSomeData = tcp.Connection.writeSomeData

        def countedWriteSomeData(self: Any, data: Any) -> Any:
            counts["tcp_sends"] += 1
            if underTLS(self):
                counts["tcp_sends_tls"] += 1
            return writeSomeData(self, data)

        doRead = tcp.Connection.doRead

        def countedDoRead(self: Any) -> Any:
            counts["tcp_reads"] += 1
            if underTLS(self):
                counts["tcp_reads_tls"] += 1
            return doRead(self)

        setattr(tls._AggregateSmallWrites, "_scheduledFlush", countedScheduledFlush)
        setattr(tls.TLSMemoryBIOProtocol, "_write", countedWrite)
        setattr(tls.TLSMemoryBIOProtocol, "dataReceived", countedDataReceived)
        setattr(tcp.Connection, "writeSomeData", countedWriteSomeData)
        setattr(tcp.Connection, "doRead", countedDoRead)
        signal.signal(signal.SIGUSR2, _snapshot)

    def _waitForReactor() -> None:
        while "twisted.internet.reactor" not in sys.modules:
            time.sleep(0.05)
        time.sleep(0.5)
        sys.modules["twisted.internet.reactor"].callFromThread(_install)

    threading.Thread(target=_waitForReactor, daemon=True).start()
