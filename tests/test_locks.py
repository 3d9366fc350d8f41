"""Locks are the kernel's (flock): exactly one holder at a time, freed the moment the holder dies, whatever
its lock file says; a forked child (a DataLoader worker) does not keep its parent's locks."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lasp.locks import LOCK_NAME, LockError, acquire, read_lock, release

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# acquire the lock of argv[1], optionally fork a child that outlives us (argv[2] == "fork"), say so, then wait
HOLDER = """
import multiprocessing as mp, os, sys, time
from lasp.locks import acquire
acquire(sys.argv[1], "run directory")
def rest(started):
    started.set()  # the fork handlers have run by now: what the child holds is what it keeps
    time.sleep(60)
if sys.argv[2] == "fork":
    ctx = mp.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=rest, args=(started,), daemon=False)
    child.start()
    started.wait()
    print(child.pid, flush=True)
else:
    print(0, flush=True)
time.sleep(60)
"""


def _hold(d: Path, fork: bool) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(d), "fork" if fork else "plain"], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    return proc, child


@pytest.mark.parametrize("fork", [False, True])
def test_a_killed_holder_frees_the_lock_at_once(tmp_path, fork, capfd):
    d = tmp_path / "run"
    proc, child = _hold(d, fork)
    try:
        with pytest.raises(LockError, match=rf"run directory {d} is in use by another lasp process \(pid {proc.pid} "):
            acquire(d, "run directory")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the holder's record is still there, and (fork) its child still runs with a copy of the lock file open
        assert read_lock(d)["pid"] == proc.pid
        if fork:
            os.kill(child, 0)
        capfd.readouterr()
        acquire(d, "run directory")
        assert "stale" not in capfd.readouterr().err  # nothing guessed from the record, nothing taken over
        assert read_lock(d)["pid"] == os.getpid()
        release(d)
        assert not (d / LOCK_NAME).exists()
    finally:
        for pid in (proc.pid, child):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait()


def _contender(d: str, barrier, results) -> None:
    barrier.wait()
    try:
        acquire(d, "run directory")
    except LockError:
        results.put(("refused", 0.0, 0.0))
        return
    start = time.monotonic()
    time.sleep(0.3)
    results.put(("held", start, time.monotonic()))
    release(d)


def test_one_holder_among_processes_started_together(tmp_path):
    ctx = mp.get_context("fork")
    for trial in range(20):
        d = tmp_path / f"run-{trial}"
        d.mkdir()
        # a lock file left by a dead process: nothing to take over, nothing to race for
        (d / LOCK_NAME).write_text('{"pid": 999999999, "host": "x", "started": "then"}\n')
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_contender, args=(str(d), barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        held = [(a, b) for kind, a, b in got if kind == "held"]
        assert held, got
        assert max(sum(1 for a, b in held if a <= t < b) for t, _ in held) == 1
