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

import atexit
import gc
import json
import os
import sys
import threading
import time
import traceback

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
        }
        with open(_OUT, "w") as f:
            json.dump(doc, f)

    atexit.register(_dump)

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

    def _waitForReactor() -> None:
        # The reactor is installed by twistd after start-up; hand the
        # timer to it from its own thread once it exists.
        while "twisted.internet.reactor" not in sys.modules:
            time.sleep(0.05)
        time.sleep(0.5)
        sys.modules["twisted.internet.reactor"].callFromThread(_install)

    threading.Thread(target=_waitForReactor, daemon=True).start()
