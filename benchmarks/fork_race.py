"""Why loader workers start from a forkserver: fork from a process whose native threads enter Python
can hang the child (CPython <= 3.11, gh-112275; fixed in 3.12).

A Ray Train worker runs C++ threads (Ray's core worker, gRPC) that call into Python; each call
creates a thread state, taking the interpreter's runtime lock (HEAD_LOCK) before it holds the GIL,
and deletes it after. A child forked while that lock is held inherits it locked and deadlocks in
``PyOS_AfterFork_Child`` -> ``_PyThreadState_DeleteExcept`` before running a line of Python. It was
seen in a demo run: a validation DataLoader's worker asleep on that futex (gdb), the job stalled.

This script reproduces it without Ray: native threads (pthread_create through ctypes) keep entering
Python while the main thread starts and joins children, which do nothing; a child not done after
5 s is counted as hung and killed.

    python -m benchmarks.fork_race fork 3000        # recorded: 16 of 3000 children hung (Python 3.11.7)
    python -m benchmarks.fork_race forkserver 3000  # recorded: 0 of 3000 (the loader's default, data.worker_start)

Not part of ``make bench`` (minutes, and a race: the count varies run to run).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import sys
import threading
import time

libc = ctypes.CDLL(None)
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
ENTER_PYTHON = CALLBACK(lambda arg: None)  # called from a native thread: a thread state made and deleted
libc.pthread_create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, CALLBACK, ctypes.c_void_p]
libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]


def churn(stop: threading.Event) -> None:
    tid = ctypes.c_ulong()
    while not stop.is_set():
        libc.pthread_create(ctypes.byref(tid), None, ENTER_PYTHON, None)
        libc.pthread_join(tid.value, None)


def child() -> None:
    pass


def main(argv: list[str]) -> int:
    method, n, threads = argv[0], int(argv[1]), int(argv[2]) if len(argv) > 2 else 8
    ctx = mp.get_context(method)
    if method == "forkserver":  # the server starts before the churn, as it does at a loader's first epoch
        first = ctx.Process(target=child)
        first.start()
        first.join()
    stop = threading.Event()
    for _ in range(threads):
        threading.Thread(target=churn, args=(stop,), daemon=True).start()
    hung, t0 = 0, time.time()
    for _ in range(n):
        p = ctx.Process(target=child)
        p.start()
        p.join(5)
        if p.is_alive():
            hung += 1
            p.kill()
            p.join()
    stop.set()
    print(f"{method}: {hung} of {n} children hung, {time.time() - t0:.1f} s, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
