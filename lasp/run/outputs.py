"""What `lasp run` made in its output_dir, so that ``--fresh`` removes that and nothing else.

``<output_dir>/lasp_run.json`` lists the top-level entries the runner made there (stage folders, logs, recipes,
reports, per-seed folders). A planned entry is listed before it is first written, so a run killed part-way
leaves nothing of its own unlisted; an entry that was already there when the run began (the user's notes, a
corpus) is never listed, and neither is the corpus: it is data, read by the run, not a result of it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable

from lasp.errors import ConfigError
from lasp.io import atomic_write_json
from lasp.locks import LOCK_NAME

RECORD = "lasp_run.json"


class RunOutputs:
    def __init__(self, output_dir: str | os.PathLike, corpus: Iterable[str | os.PathLike] = ()):
        self.root = Path(output_dir)
        self.path = self.root / RECORD
        self.made: set[str] = set()
        self.keep = {RECORD, LOCK_NAME} | {n for c in corpus if (n := self._top(c))}
        if self.path.is_file():
            try:
                self.made = set(json.loads(self.path.read_text(encoding="utf-8"))["made"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ConfigError(f"{self.path}: unreadable ({err}); it lists what lasp run made in "
                                  f"{self.root}: restore it, or clean the folder by hand") from None

    def _top(self, path: str | os.PathLike) -> str | None:
        """The entry of output_dir that holds ``path`` (None when ``path`` is outside it)."""
        path, root = Path(path).absolute(), self.root.absolute()
        if path == root or not path.is_relative_to(root):
            return None
        return path.relative_to(root).parts[0]

    def claim(self, paths: Iterable[str | os.PathLike]) -> None:
        """List the entries holding ``paths`` that do not exist yet (about to be made by this run)."""
        new = {n for p in paths if (n := self._top(p)) and n not in self.keep and n not in self.made
               and not (self.root / n).exists()}
        if new:
            self.made |= new
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, {"made": sorted(self.made)}, indent=1)

    def snapshot(self) -> set[str]:
        return set(os.listdir(self.root)) if self.root.is_dir() else set()

    def claim_new(self, before: set[str]) -> None:
        """List what appeared in output_dir since ``before`` (:meth:`snapshot`), the corpus excepted."""
        new = {n for n in self.snapshot() - before if n not in self.keep and n not in self.made}
        if new:
            self.made |= new
            atomic_write_json(self.path, {"made": sorted(self.made)}, indent=1)

    def remove(self) -> list[str]:
        """``--fresh``: remove every listed entry (and the list); returns what went."""
        gone = []
        for name in sorted(self.made):
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            gone.append(name)
        self.path.unlink(missing_ok=True)
        self.made = set()
        if gone:
            print(f"--fresh: removed what lasp run made in {self.root}: {', '.join(gone)}", file=sys.stderr)
        return gone
