"""
The server side of C{bench/p99_probe.py}, loaded by Python at start-up
(C{sitecustomize}) when this folder is on C{PYTHONPATH}, and active only
when C{$IMGATEWAY_P99_PROBE} names a file. In the gateway's own process it
records:

 - every garbage collection: start, wall and CPU length, generation,
   objects collected;
 - how late a 1 ms reactor timer fires (only when more than 1 ms), with
   the CPU that the reactor's thread and the whole process used meanwhile
   (a stall with little CPU was the process waiting for a core; with the
   process's CPU but not the reactor's, another thread held the GIL);
 - the reactor thread's stack when it has run on without reaching the
   timer for more than 4 ms (a watchdog thread looks every 2 ms): what the
   long turns were doing;

and writes them to that file, as JSON, when the process exits. It changes
nothing else in the process.
"""

import array
import atexit
import gc
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

_OUT = os.environ.get("IMGATEWAY_P99_PROBE") or ""

if _OUT:
    _gcEvents: list[tuple[int, int, int, int, int]] = []  # start µs, wall µs, generation, collected, CPU µs
    _lags: list[tuple[int, int, int, int]] = []  # due µs, late µs, reactor thread CPU µs, process CPU µs
    _stacks: list[tuple[int, int, int, str]] = []  # µs, µs since the last timer, reactor thread CPU µs since, stack
    _gcStart = [0, 0]
    _last: list[float] = [0.0, 0.0]  # monotonic s and thread CPU ns of the last timer
    _ticks = [0]

    def _onGC(phase: str, info: dict[str, int]) -> None:
        now = time.monotonic_ns() // 1000
        cpu = time.thread_time_ns() // 1000
        if phase == "start":
            _gcStart[0], _gcStart[1] = now, cpu
        else:
            _gcEvents.append((_gcStart[0], now - _gcStart[0], info["generation"], info["collected"], cpu - _gcStart[1]))

    gc.callbacks.append(_onGC)

    def _dump() -> None:
        doc = {
            "pid": os.getpid(),
            "gc": _gcEvents,
            "lags": _lags,
            "stacks": _stacks,
            "ticks": _ticks[0],
            "threshold": gc.get_threshold(),
            "frozen": gc.get_freeze_count(),
            "counts": gc.get_count(),
            "stats": gc.get_stats(),
            "hops": _hops,
            "polls": _polls.tolist(),
            "timed": _timed,
            "threads_cpu_us": _threadsCpu(),
            "thread_samples": _threadSamples,
            "reactor_counts": _counts,
            "reactor": type(sys.modules["twisted.internet.reactor"]).__qualname__
            if "twisted.internet.reactor" in sys.modules
            else None,
        }
        with open(_OUT, "w") as f:
            json.dump(doc, f)

    atexit.register(_dump)

    def _threadsCpu() -> dict[str, int]:
        """
        Each thread's CPU µs since it started (C{/proc/self/task}), by name
        and thread id: the reactor's, the thread pools' (SQLite), the
        probe's own.
        """
        out = {}
        tick = os.sysconf("SC_CLK_TCK")
        try:
            for tid in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{tid}/stat") as f:
                    text = f.read()
                name = text[text.index("(") + 1:text.rindex(")")]
                fields = text[text.rindex(")") + 2:].split()
                out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) * 1_000_000 // tick
        except OSError:
            pass
        return out

    #: With $IMGATEWAY_P99_GARBAGE: what the collector finds as garbage
    #: (kept, gc.DEBUG_SAVEALL), by type, counted at exit.
    _garbage = bool(os.environ.get("IMGATEWAY_P99_GARBAGE"))

    def _dumpGarbage() -> None:
        from collections import Counter

        kinds = Counter(type(o).__module__ + "." + type(o).__qualname__ for o in gc.garbage)
        with open(_OUT + ".garbage", "w") as f:
            json.dump(kinds.most_common(40), f)

    def _watch(ident: int) -> None:
        clock = time.pthread_getcpuclockid(ident)
        sampledAt = 0.0
        while True:
            time.sleep(0.002)
            last = _last[0]
            now = time.monotonic()
            if last and now - last > 0.004 and last != sampledAt and len(_stacks) < 5000:
                sampledAt = last
                frame = sys._current_frames().get(ident)
                if frame is None:
                    continue
                cpu = time.clock_gettime_ns(clock)
                stack = traceback.extract_stack(frame)[-12:]
                text = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in reversed(stack))
                _stacks.append((int(now * 1e6), int((now - last) * 1e6), int(cpu - _last[1]) // 1000, text))

    def _install() -> None:
        reactor = sys.modules["twisted.internet.reactor"]
        period = 0.001

        def tick(due: float, cpu0: int, proc0: int) -> None:
            now = time.monotonic()
            cpu = time.thread_time_ns()
            proc = time.process_time_ns()
            _last[0], _last[1] = now, float(cpu)
            _ticks[0] += 1
            late = now - due
            if late > 0.001:
                _lags.append((int(due * 1e6), int(late * 1e6), (cpu - cpu0) // 1000, (proc - proc0) // 1000))
            reactor.callLater(period, tick, now + period, cpu, proc)

        reactor.callLater(period, tick, time.monotonic() + period, time.thread_time_ns(), time.process_time_ns())
        reactor.addSystemEventTrigger("after", "shutdown", _dump)
        if _garbage:
            gc.set_debug(gc.DEBUG_SAVEALL)
            reactor.addSystemEventTrigger("after", "shutdown", _dumpGarbage)
        threading.Thread(target=_watch, args=(threading.get_ident(),), daemon=True).start()

    #: With $IMGATEWAY_P99_TRACE: each message's hops through the reactor
    #: instead of the timer and the watchdog (which wake the process).
    _trace = bool(os.environ.get("IMGATEWAY_P99_TRACE"))
    _hops: list[tuple[int, int, int, int, int, int, int, int]] = []
    _counts = [0, 0, 0]  # polls, epoll_ctl calls, sends
    #: With the trace, one row of eight per poll (the reactor's turns are
    #: what lies between a poll's return and the next poll's start): wall
    #: µs and thread CPU µs at the poll's start, the same at its return,
    #: the process's CPU µs at its return (other threads' share), and the
    #: collections, log events and timed calls run so far.
    _polls = array.array("q")
    #: Timed calls the reactor ran (C{runUntilCurrent}), when one turn's
    #: took more than 100 µs: start µs, wall µs, CPU µs, the calls' names.
    _timed: list[tuple[int, int, int, str]] = []
    _running = [0, 0]  # log events, timed calls run
    #: With the trace, every second or so: (µs, each thread's CPU µs).
    _threadSamples: list[tuple[int, dict[str, int]]] = []

    def _installTrace() -> None:
        """
        Time every message from the poll that woke the reactor for it to the
        C{send} that delivered it, matched by its body C{"<n> <µs>"}: the
        reactor's poller is wrapped (counting polls and C{epoll_ctl} calls)
        and Twisted's TCP connection's C{_dataReceived} and C{writeSomeData}
        are wrapped in this process only. A benchmark's instrument, not the
        gateway's code.
        """
        import re

        from twisted.internet import tcp

        reactor: Any = sys.modules["twisted.internet.reactor"]
        body = re.compile(rb"\d+ \d{9,}")
        turn = [0, 0, 0]  # monotonic ns at the poll's return, thread CPU ns, poll number
        reads: dict[bytes, tuple[int, int, int, int]] = {}

        class Poller:
            def __init__(self, poller: object) -> None:
                self._poller = poller

            def poll(self, *args: object) -> object:
                start, startCpu = time.monotonic_ns(), time.thread_time_ns()
                result = self._poller.poll(*args)  # type: ignore[attr-defined]
                turn[0], turn[1] = time.monotonic_ns(), time.thread_time_ns()
                turn[2] += 1
                _counts[0] += 1
                if not _threadSamples or turn[0] // 1000 - _threadSamples[-1][0] > 1_000_000:
                    _threadSamples.append((turn[0] // 1000, _threadsCpu()))
                if len(_polls) < 8_000_000:
                    _polls.extend((start // 1000, startCpu // 1000, turn[0] // 1000, turn[1] // 1000,
                                   time.process_time_ns() // 1000, len(_gcEvents), _running[0], _running[1]))
                return result

            def register(self, *args: object) -> object:
                _counts[1] += 1
                return self._poller.register(*args)  # type: ignore[attr-defined]

            def modify(self, *args: object) -> object:
                _counts[1] += 1
                return self._poller.modify(*args)  # type: ignore[attr-defined]

            def unregister(self, *args: object) -> object:
                _counts[1] += 1
                return self._poller.unregister(*args)  # type: ignore[attr-defined]

            def __getattr__(self, name: str) -> object:
                return getattr(self._poller, name)

        reactor._poller = Poller(reactor._poller)
        dataReceived = tcp.Connection._dataReceived
        writeSomeData = tcp.Connection.writeSomeData

        def tracedDataReceived(self: Any, data: bytes) -> Any:
            if data and len(reads) < 1_000_000:
                now = time.monotonic_ns()
                for m in body.finditer(data):
                    reads[m.group()] = (turn[0], now, turn[1], turn[2])
            return dataReceived(self, data)

        def tracedWriteSomeData(self: Any, data: bytes) -> Any:
            result = writeSomeData(self, data)
            _counts[2] += 1
            if reads and len(_hops) < 1_000_000:
                now, cpu = time.monotonic_ns(), time.thread_time_ns()
                for m in body.finditer(data):
                    seen = reads.pop(m.group(), None)
                    if seen is not None:
                        wake, read, wakeCpu, polls = seen
                        _hops.append((int(m.group().split()[1]), wake // 1000, read // 1000, now // 1000,
                                      (cpu - wakeCpu) // 1000, turn[2] - polls, _counts[0], _counts[1]))
            return result

        setattr(tcp.Connection, "_dataReceived", tracedDataReceived)
        setattr(tcp.Connection, "writeSomeData", tracedWriteSomeData)

        runUntilCurrent = reactor.runUntilCurrent

        def tracedRunUntilCurrent() -> None:
            # The calls due now (a heap: only looked through when its first is due).
            pending = reactor._pendingTimedCalls
            now = reactor.seconds()
            threaded = reactor.threadCallQueue
            if not reactor._newTimedCalls and not threaded and (not pending or pending[0].time > now):
                runUntilCurrent()
                return
            due = [c.func for c in [*pending, *reactor._newTimedCalls] if c.time <= now and not c.cancelled]
            due += [f for f, _, _ in threaded]
            t0, c0 = time.monotonic_ns(), time.thread_time_ns()
            runUntilCurrent()
            _running[1] += len(due)
            wall = (time.monotonic_ns() - t0) // 1000
            if wall > 100 and len(_timed) < 100_000:
                names = ",".join(sorted({getattr(f, "__qualname__", repr(f)).replace(",", ";") for f in due}))
                _timed.append((t0 // 1000, wall, (time.thread_time_ns() - c0) // 1000, names))

        reactor.runUntilCurrent = tracedRunUntilCurrent

        from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
        from zope.interface import provider

        @provider(ILogObserver)
        def countLog(event: LogEvent) -> None:
            _running[0] += 1

        globalLogPublisher.addObserver(countLog)
        reactor.addSystemEventTrigger("after", "shutdown", _dump)

    def _waitForReactor() -> None:
        # The reactor is installed by twistd after start-up; hand the
        # timer to it from its own thread once it exists.
        while "twisted.internet.reactor" not in sys.modules:
            time.sleep(0.05)
        time.sleep(0.5)
        sys.modules["twisted.internet.reactor"].callFromThread(_installTrace if _trace else _install)

    threading.Thread(target=_waitForReactor, daemon=True).start()
