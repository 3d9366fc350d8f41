"""The stage scheduler of `lasp run`: each stage an ordinary ``lasp`` command in its own process.

At most ``parallel`` thread-slots are busy; a stage starts as soon as the stages it needs are done, in the order
it is listed; a stage whose output exists is skipped; a failed stage stops the run with the end of its log.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lasp.errors import LaspError


@dataclass
class Job:
    name: str
    argv: list[str]
    deps: list[str]
    done_marker: Path
    threads: int = 1
    run_dir: Path | None = None
    max_steps: int | None = None
    max_minutes: float | None = None  # a wall-time budget; progress is then shown against it
    proc: subprocess.Popen | None = None
    started: float = 0.0
    log: Path | None = None


def _last_step(job: Job) -> int | None:
    if job.run_dir is None:
        return None
    path = job.run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
        return int(json.loads(lines[-1]).get("step", 0)) if lines else None
    except (OSError, ValueError, json.JSONDecodeError):
        return None


def _progress(job: Job, step: int | None, elapsed: float) -> str:
    """`` step 170/300 (30s)`` or, for a stage that stops on a time budget, `` step 170 (30s of 120s)``."""
    if step is None:
        return f" ({elapsed:.0f}s)"
    if job.max_minutes:
        return f" step {step} ({elapsed:.0f}s of {job.max_minutes * 60:.0f}s)"
    return f" step {step}/{job.max_steps} ({elapsed:.0f}s)" if job.max_steps else f" step {step} ({elapsed:.0f}s)"


def _status(running: list[Job], done: int, total: int, t0: float) -> str:
    parts = [f"{job.name}{_progress(job, _last_step(job), time.monotonic() - job.started)}" for job in running]
    return f"[{_clock(time.monotonic() - t0)}] {done}/{total} done | running: {', '.join(parts) or '-'}"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def run_jobs(jobs: list[Job], parallel: int, log_dir: Path, progress: bool = True) -> dict[str, float]:
    """Run the stage graph with at most ``parallel`` thread-slots busy; returns wall seconds per job."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = [j for j in jobs if not j.done_marker.exists()]
    finished = {j.name for j in jobs if j.done_marker.exists()}
    for name in sorted(finished):
        print(f"  {name}: already done, skipped")
    running: list[Job] = []
    walls: dict[str, float] = {}
    t0, last_print = time.monotonic(), 0.0
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    try:
        while pending or running:
            busy = sum(j.threads for j in running)
            for job in list(pending):
                if all(d in finished for d in job.deps) and (busy + job.threads <= parallel or not running):
                    job.log = log_dir / f"{job.name}.log"
                    job.log.parent.mkdir(parents=True, exist_ok=True)  # seed-<s>/ with several seeds
                    fh = open(job.log, "ab")
                    job.proc = subprocess.Popen(job.argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
                    fh.close()
                    job.started = time.monotonic()
                    pending.remove(job)
                    running.append(job)
                    busy += job.threads
                    print(f"  [{_clock(job.started - t0)}] start {job.name} (log: {job.log})", flush=True)
            for job in list(running):
                code = job.proc.poll()
                if code is None:
                    continue
                running.remove(job)
                walls[job.name] = time.monotonic() - job.started
                if code != 0 or not job.done_marker.exists():
                    tail = job.log.read_text(errors="replace").strip().splitlines()[-15:]
                    raise LaspError(f"stage {job.name} failed (exit {code}); last lines of {job.log}:\n    "
                                    + "\n    ".join(tail))
                finished.add(job.name)
                print(f"  [{_clock(time.monotonic() - t0)}] done  {job.name} in {walls[job.name]:.0f}s", flush=True)
            if running and progress and time.monotonic() - last_print > 30:
                print("  " + _status(running, len(finished), len(jobs), t0), flush=True)
                last_print = time.monotonic()
            if running:
                time.sleep(1.0)
            elif pending and not any(all(d in finished for d in j.deps) for j in pending):
                raise LaspError(f"stages {', '.join(j.name for j in pending)} wait for stages that never ran")
    finally:
        _stop(running)
    return walls


def _stop(running: list[Job]) -> None:
    """Stop the stages still running (this run failed or was stopped) and wait for them: each saves a checkpoint
    at its next step boundary before it exits; asked again (a second Ctrl-C), they are killed."""
    try:
        for job in running:
            if job.proc.poll() is None:
                job.proc.terminate()
        for job in running:
            job.proc.wait()
    except KeyboardInterrupt:
        for job in running:
            job.proc.kill()
        raise
