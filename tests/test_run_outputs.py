"""`lasp run` and what is not its own: a corpus, once made, is only read (whoever made it); one `lasp run` per
output_dir; `--fresh` removes what an earlier `lasp run` listed as made there, after the recipe was found runnable.

The stages themselves are replaced by a stand-in that only makes their folders (they are tested elsewhere).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lasp.cli import main
from lasp.data.synth import synthesize_corpus
from lasp.run import runner
from test_provenance_masks import tree_hashes

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"


def _no_stages(jobs, parallel, log_dir, progress=True):
    """What the scheduler leaves behind, without training: each stage's folder (and its log)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        (job.run_dir or job.done_marker.parent).mkdir(parents=True, exist_ok=True)
        (log_dir / f"{job.name}.log").write_text("stage log\n")
    return {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A corpus made by `lasp data synth` (es, de; 6 train, 2 dev, 2 test utterances each)."""
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize_corpus(["es", "de"], out, utterances_per_lang=6, dev_utterances=2, test_utterances=2, workers=1)
    return out


def _args(out: Path, corpus: Path, *extra: str) -> list[str]:
    # other settings than the corpus was made with: a lasp that regenerates "its" corpus rewrites it
    return [str(DEMO), f"output_dir={out}", f"run.corpus={corpus}", f"run.report={out}/report.md",
            "run.languages=[es,de]", "run.train_utterances=7", "run.dev_utterances=2", "run.test_utterances=2",
            "run.systems=[shared]", *extra]


def test_a_synthesized_corpus_is_read_as_it_is(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "run_jobs", _no_stages)
    monkeypatch.setattr(runner, "write_reports", lambda *a, **k: Path(a[0].run.report))
    before = tree_hashes(corpus)
    assert main(["run", *_args(tmp_path / "out", corpus)]) == 0
    out = capsys.readouterr().out
    assert "made with other settings than run.* asks (utterances_per_lang 6, asked 7)" in out
    assert tree_hashes(corpus) == before
    stages = (tmp_path / "out" / "stages.yaml").read_text()
    assert f"train: {corpus / 'train.jsonl'}" in stages
    # asking to synthesize over it is refused, and touches nothing
    assert main(["run", *_args(tmp_path / "again", corpus, "run.synthesize=always")]) == 1
    assert "refusing to synthesize" in capsys.readouterr().err
    assert tree_hashes(corpus) == before and not (tmp_path / "again").exists()


def test_fresh_removes_only_what_lasp_run_made_and_only_once_the_recipe_can_run(corpus, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.setattr(runner, "run_jobs", _no_stages)
    monkeypatch.setattr(runner, "write_reports", lambda *a, **k: Path(a[0].run.report))
    out = tmp_path / "out"
    (out / "my-notes").mkdir(parents=True)
    (out / "my-notes" / "notes.txt").write_text("mine\n")
    (out / "results-by-hand.csv").write_text("a,b\n")
    assert main(["run", *_args(out, corpus)]) == 0
    made = {"stages.yaml", "recipe.yaml", "logs", "base", "pretrain-shared", "finetune-shared", "eval-shared"}
    assert made <= set(os.listdir(out))
    (out / "pretrain-shared" / "checkpoint-of-the-old-run").write_text("old\n")
    before = tree_hashes(out)
    # a recipe that cannot run (a corpus without test.jsonl): refused before anything is removed
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.jsonl").write_text((corpus / "train.jsonl").read_text())
    assert main(["run", "--fresh", *_args(out, broken)]) == 1
    assert "has no test.jsonl" in capsys.readouterr().err
    assert tree_hashes(out) == before
    # a runnable one: what the earlier run made goes, the user's files stay
    assert main(["run", "--fresh", *_args(out, corpus)]) == 0
    assert "removed what lasp run made" in capsys.readouterr().err
    assert not (out / "pretrain-shared" / "checkpoint-of-the-old-run").exists()
    after = tree_hashes(out)
    assert after["my-notes/notes.txt"] == before["my-notes/notes.txt"]
    assert after["results-by-hand.csv"] == before["results-by-hand.csv"]


# a `lasp run` whose stages wait (a long base pre-training) until the test is done with it
BUSY_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lasp.run import runner
    def waiting(jobs, parallel, log_dir, progress=True):
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "base.log").write_text("first run's base stage\\n")
        Path(sys.argv[1]).touch()
        time.sleep(600)
    runner.run_jobs = waiting
    from lasp.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_a_second_lasp_run_on_a_busy_output_dir_is_refused_before_it_touches_anything(corpus, tmp_path, capsys):
    out, ready = tmp_path / "out", tmp_path / "ready"
    args = ["run", *_args(out, corpus)]
    first = subprocess.Popen([sys.executable, "-c", BUSY_RUN, str(ready), *args], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists():
            assert first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.05)
        before, corpus_before = tree_hashes(out), tree_hashes(corpus)
        stamps = {f: (out / f).stat().st_mtime_ns for f in ("stages.yaml", "recipe.yaml")}
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"output_dir {out} is in use by another lasp process (pid {first.pid} " in err
        assert tree_hashes(out) == before and tree_hashes(corpus) == corpus_before
        assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps
    finally:
        first.kill()
        first.wait()
