"""``make gpu-check``: one command that accepts a GPU machine for lasp, in about 8 minutes on one H100 / H200.

Items, each a separate process with its own time limit, PASS or FAIL:

  pytest-gpu     ``pytest -m gpu``: the masked cast in bf16 against fp64 at XLSR-53 shapes, the confined step
                 bit-identical outside the union with its peak memory, bf16 and fp16 fine-tuning steps, the Triton
                 cast's saved-copy check, the XLSR-53 recipe's micro-batches within 80 GB
  bench          ``lasp bench steps`` at XLSR-53 shapes (2k/8k/16k tokens, bf16): dense vs masked single and
                 mixed 2/4/8 languages, peak memory, one PASS/FAIL per goal
  torchrun       a one-process ``torchrun`` fine-tune of the xlsr-53 preset (the process group is
                 ``cpu:gloo,cuda:nccl``; gradient accumulation, a masked system, its mask search on rank 0)
  lasp-run       ``lasp run recipes/xlsr53_commonvoice.yaml`` on the xlsr-53 preset, a few steps of every stage
                 (base, masks, pretrain, finetune for lasp and adapters, evaluate, report)

The corpus is a Common Voice release in miniature (:mod:`lasp.bench.cv_fixture`, test tones, 30 training clips per
language so that ``masks.min_utterances`` 20 holds) imported with ``lasp data import-commonvoice``; nothing is
synthesized (the GPU machine has no word lists). Everything goes under ``--out`` (``OUT``, default
``runs/gpu-check``): ``gpu-check.json`` (one record per item, the bench goals, versions, the device) and
``gpu-check.log`` (every item's output). The exit code is 0 only when every item passed.

``GPU_CHECK_DEVICE=cpu`` (or ``--device cpu``) runs the same items on CPU with tiny shapes (the tiny preset, the
bench's ci size, the GPU tests' CPU dry run): it proves the plumbing, not the speed or memory goals.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from lasp.bench.cv_fixture import make_commonvoice, sentences
from lasp.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "xlsr53_commonvoice.yaml"
LANGUAGES = ("es", "ru")
CLIPS_PER_LANGUAGE = 50  # split 60/20/20: 30 train, 10 dev, 10 test
# seconds per item on the GPU machine: 8 minutes in all, with room for the corpus and the interpreter starts
LIMITS = {"pytest-gpu": 100, "bench": 140, "torchrun": 60, "lasp-run": 160}
CPU_SLOWER = 6  # the CPU dry run's limits are this many times longer (a small shared CPU, no GPU)


def _run(name: str, cmd: list[str], log, limit: float, env: dict | None = None) -> tuple[bool, float, str]:
    """Run ``cmd``, its output appended to ``log``; (exit code 0, seconds, last output line)."""
    log.write(f"\n===== {name}: {' '.join(cmd)}\n")
    log.flush()
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=limit)
        output, ok = done.stdout, done.returncode == 0
        tail = f"exit code {done.returncode}"
    except subprocess.TimeoutExpired as err:
        output = err.stdout if isinstance(err.stdout, str) else (err.stdout or b"").decode(errors="replace")
        ok, tail = False, f"stopped after its {limit:.0f} s limit"
    log.write(output)
    log.write(f"===== {name}: {tail}\n")
    log.flush()
    lines = [ln for ln in output.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return ok, time.monotonic() - start, (last or tail) if ok else f"{tail}: {last}"


def make_corpus(out: Path, log) -> Path:
    """The Common Voice-layout fixture, imported into manifests (``out/cv``)."""
    release = out / "cv-release"
    make_commonvoice(str(release), {lang: sentences(lang, CLIPS_PER_LANGUAGE) for lang in LANGUAGES}, sr=16000)
    corpus = out / "cv"
    ok, _, line = _run("corpus", [sys.executable, "-m", "lasp", "data", "import-commonvoice", str(release),
                                  "--langs", ",".join(LANGUAGES), "--out", str(corpus)], log, 120)
    if not ok:
        raise RuntimeError(f"importing the Common Voice fixture failed: {line}")
    return corpus


def recipe_overrides(out: Path, corpus: Path, device: str) -> list[str]:
    """The xlsr53 recipe on the fixture: its model (the preset on CPU: tiny), batches and precision; few steps."""
    return [
        f"device={device}", f"model.name={'xlsr-53' if device == 'cuda' else 'tiny'}", f"output_dir={out}/run",
        f"data.train={corpus}/train.jsonl", f"data.valid={corpus}/dev.jsonl", f"data.test={corpus}/test.jsonl",
        f"data.languages=[{','.join(LANGUAGES)}]", f"data.vocab={out}/run/vocab", "data.num_workers=2",
        "masks.max_batches=2", "pretrain.max_steps=2", "pretrain.ckpt_every=2", "pretrain.optim.warmup_steps=1",
        "finetune.max_steps=2", "finetune.ckpt_every=2", "evaluate.batch_size=8", f"run.corpus={corpus}",
        f"run.languages=[{','.join(LANGUAGES)}]", "run.systems=[lasp,adapters]", "run.parallel=2",
        "run.base_steps=2", f"run.report={out}/run/report.md",
    ]


def bench_goals(path: Path) -> tuple[bool, list[dict]]:
    """(every goal passed or is pending without a GPU, the goals) from ``lasp bench --json``."""
    goals = json.loads(path.read_text())["goals"] if path.is_file() else []
    verdicts = [g["status"] for g in goals]
    return bool(goals) and all(v == "PASS" or v.startswith(("pending", "not measured")) for v in verdicts), goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lasp.bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-check")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=os.environ.get("GPU_CHECK_DEVICE") or "cuda")
    args = parser.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible (GPU_CHECK_DEVICE=cpu runs the CPU dry run)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    summary: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.machine()})",
                     "dry_run": device == "cpu", "torch": torch.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version(), "items": []}
    try:
        import transformers

        summary["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    python = sys.executable
    with open(out / "gpu-check.log", "w", encoding="utf-8") as log:
        corpus = make_corpus(out, log)
        overrides = recipe_overrides(out, corpus, device)
        bench_json = out / "bench.json"
        plan = [
            # the GPU tests' file only: collecting the whole suite would import what the GPU machine lacks
            ("pytest-gpu", [python, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                            str(ROOT / "tests" / "test_gpu.py")], {"LASP_GPU_TESTS_DEVICE": device}),
            ("bench", [python, "-m", "lasp", "bench", "steps", "--device", device, "--modes", "cast",
                       "--size", "full" if device == "cuda" else "ci", "--json", str(bench_json)], {}),
            ("torchrun", [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "lasp",
                          "finetune", str(RECIPE), *overrides, f"finetune.run_dir={out}/torchrun",
                          "finetune.system=lasp", f"finetune.init={'xlsr-53' if device == 'cuda' else 'tiny'}",
                          f"masks.dir={out}/torchrun-masks", "masks.scorer=magnitude", "finetune.grad_accum_steps=2"],
             {}),
            ("lasp-run", [python, "-m", "lasp", "run", str(RECIPE), *overrides], {}),
        ]
        for name, cmd, env in plan:
            ok, seconds, line = _run(name, cmd, log, LIMITS[name] * (1 if device == "cuda" else CPU_SLOWER), env)
            item = {"name": name, "status": "PASS" if ok else "FAIL", "seconds": round(seconds, 1), "detail": line}
            if name == "bench":
                goals_ok, item["goals"] = bench_goals(bench_json)
                item["status"] = "PASS" if ok and goals_ok else "FAIL"
                if bench_json.is_file():
                    item["rows"] = json.loads(bench_json.read_text())["rows"]
            if name == "torchrun" and ok:
                train = json.loads((out / "torchrun" / "final" / "train_summary.json").read_text())
                item["process_group"] = train.get("distributed")
                wanted = "nccl" if device == "cuda" else "gloo"
                if wanted not in json.dumps(train.get("distributed")):
                    item.update(status="FAIL", detail=f"the fine-tune ran without a {wanted} process group")
            if name == "lasp-run" and ok:
                results = {s: out / "run" / f"eval-{s}" / "results.json" for s in ("lasp", "adapters")}
                item["macro_cer"] = {s: json.loads(p.read_text())["macro"]["cer"] for s, p in results.items()
                                     if p.is_file()}
                if len(item["macro_cer"]) != len(results) or not (out / "run" / "report.md").is_file():
                    item.update(status="FAIL", detail="the report or an evaluation is missing")
            summary["items"].append(item)
            print(f"{item['status']}  {name:<11} {seconds:6.1f} s  {item['detail'][:150]}", flush=True)
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["passed"] = all(i["status"] == "PASS" for i in summary["items"])
    atomic_write_json(out / "gpu-check.json", summary, indent=1)
    for item in summary["items"]:
        for goal in item.get("goals", []):
            print(f"      {goal['status']}: {goal['name']}" + (f" ({goal['detail']})" if goal.get("detail") else ""))
    print(f"{'PASS' if summary['passed'] else 'FAIL'}  gpu-check in {summary['seconds']:.0f} s: {out}/gpu-check.json, "
          f"{out}/gpu-check.log")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
