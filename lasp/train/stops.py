"""Ctrl-C and SIGTERM during training: the step in flight finishes, then the loop saves and stops.

A signal that interrupted a step part-way would leave the model, the optimizer, the batch stream and the RNGs
at different points of that step, and a checkpoint of that mixture does not resume to the run an
uninterrupted process would have made. So while training runs, SIGINT and SIGTERM only *ask* for a stop;
the loop looks at the request at each step boundary, where everything it saves belongs to the same step.

A second Ctrl-C stops at once, without saving (the run then resumes from its last periodic checkpoint, as
after ``kill -9``). SIGTERM never does: schedulers (SLURM, Kubernetes) send it once and follow with SIGKILL
after a grace period, which a step boundary comes well within.
"""
from __future__ import annotations

import os
import signal
import threading

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal, at a step boundary, after saving; ``str()`` says where, ``signum`` which
    signal (the CLI exits with 128 + signum: 130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class StopRequests:
    """``with StopRequests() as stops:`` — SIGINT/SIGTERM set ``stops.signum`` instead of interrupting; the
    previous handlers come back when the block ends. Outside the main thread (no signals there) it does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a process forked during training inherited this handler: the usual ending
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNAL_NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

