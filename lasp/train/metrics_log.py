"""Training logs: progress on stderr, TensorBoard scalars and ``metrics.jsonl``.

Only rank 0 writes. ``metrics.jsonl`` is appended to (a resumed run continues
the same file) and flushed per line, so a killed run keeps what it logged.

Progress: a tqdm bar when stderr is a terminal. When it is not (``nohup``,
SLURM, ``> log``), a bar would write nothing readable until it ends, so plain
lines are printed instead, one every ``LASP_PROGRESS_SECONDS`` seconds
(default 30) and one at the end: step, loss, learning rate, steps per second
and the estimated time left.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lasp.errors import ConfigError
from lasp.io import atomic_write, writing


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, total: int, initial: int = 0, rank: int = 0,
                 tensorboard: bool = True, progress: bool = True, desc: str = "train"):
        self.rank = rank
        self.run_dir = Path(run_dir)
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._plain: _PlainProgress | None = None
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a declared dependency
                warnings.warn("tensorboard is not installed; scalars go to metrics.jsonl only", stacklevel=2)
        if progress and sys.stderr.isatty():
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
        elif progress:
            self._plain = _PlainProgress(desc, total, initial, progress_seconds())

    def log(self, step: int, metrics: dict[str, Any], *, kind: str = "train") -> None:
        if self.rank != 0:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                 for k, v in metrics.items()}
        record = {"step": step, "kind": kind, **clean}
        assert self._jsonl is not None
        with writing(self._jsonl.name):
            self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
        if self._bar is not None and kind == "train":
            shown = {k: f"{v:.3g}" for k, v in clean.items() if k in ("loss", "lr", "ppl", "cer") and
                     isinstance(v, float)}
            self._bar.set_postfix(shown, refresh=False)
        if self._plain is not None and kind == "train":
            self._plain.metrics(step, clean)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)
        if self._plain is not None:
            self._plain.advance(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._plain is not None:
            self._plain.close()
            self._plain = None
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        self._bar = self._tb = self._jsonl = None


def progress_seconds() -> float:
    """Seconds between plain progress lines: ``LASP_PROGRESS_SECONDS`` (default 30)."""
    raw = os.environ.get("LASP_PROGRESS_SECONDS", "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"LASP_PROGRESS_SECONDS must be a number of seconds >= 0, got {raw!r}")
    return value


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _PlainProgress:
    """Newline-terminated progress lines for logs: no carriage returns, no terminal escapes.

    A line is due every ``interval`` seconds. It is printed when the step's metrics arrive (so the loss shown
    is that step's), or at the next step when that step logged nothing.
    """

    def __init__(self, desc: str, total: int, initial: int, interval: float, stream=None):
        self.desc, self.total, self.step, self.first = desc, total, initial, initial
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = self.last_print = time.monotonic()
        self.last: dict[str, Any] = {}
        self.due = False
        self.printed_step = None

    def advance(self, n: int) -> None:
        if self.due:  # the previous step logged no metrics: print with the last known ones
            self._print()
        self.step += n
        self.due = time.monotonic() - self.last_print >= self.interval

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        self.last = {"step": step, **values}
        if self.due:
            self._print()

    def close(self) -> None:
        if self.printed_step != self.step and self.step > self.first:
            self._print()

    def _print(self) -> None:
        now = time.monotonic()
        elapsed = now - self.t0
        done = self.step - self.first
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.step) / rate if rate > 0 else float("inf")
        parts = [f"{self.desc} step {self.step}/{self.total} ({self.step / max(self.total, 1):.0%})"]
        loss = self.last.get("loss")
        if isinstance(loss, float):
            at = "" if self.last.get("step") == self.step else f" (step {self.last['step']})"
            parts.append(f"loss {loss:.4g}{at}")
        if isinstance(self.last.get("lr"), float):
            parts.append(f"lr {self.last['lr']:.3g}")
        parts += [f"rate {rate:.3g} steps/s", f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta)}"]
        print(" | ".join(parts), file=self.stream, flush=True)
        self.last_print, self.due, self.printed_step = now, False, self.step


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (an empty list when there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def trim_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the records of steps after ``step`` (and a line a killed process left half-written): a run that
    resumes from its checkpoint at ``step`` trains those steps again and logs them afresh."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        at = record.get("step", 0) if isinstance(record, dict) else None
        if isinstance(at, (int, float)) and at <= step:
            kept.append(line + "\n")
    if len(kept) != len(text.splitlines()) or (text and not text.endswith("\n")):
        atomic_write(path, "".join(kept))
