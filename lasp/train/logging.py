"""Training logs: a tqdm bar, TensorBoard scalars and ``metrics.jsonl``.

Only rank 0 writes. ``metrics.jsonl`` is appended to (a resumed run continues
the same file) and flushed per line, so a killed run keeps what it logged.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, total: int, initial: int = 0, rank: int = 0,
                 tensorboard: bool = True, progress: bool = True, desc: str = "train"):
        self.rank = rank
        self.run_dir = Path(run_dir)
        self._jsonl = None
        self._tb = None
        self._bar = None
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
        if progress:
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                             disable=None)  # None: no bar when stderr is not a terminal

    def log(self, step: int, metrics: dict[str, Any], *, kind: str = "train") -> None:
        if self.rank != 0:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                 for k, v in metrics.items()}
        record = {"step": step, "kind": kind, **clean}
        assert self._jsonl is not None
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

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        self._bar = self._tb = self._jsonl = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (an empty list when there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
