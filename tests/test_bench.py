import json

import pytest
import torch

from lasp.bench import steps as bench_steps
from lasp.bench.steps import BenchRow, format_table, run_bench, time_ms
from lasp.cli import main
from lasp.errors import ConfigError


def test_time_ms_discards_the_warmup_calls_and_takes_the_median(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench_steps, "_now", lambda device: clock[0])
    # seconds per call: two slow warm-up calls, then five timed ones (median 4 ms, mean 4.4 ms)
    durations = iter([9.0, 9.0, 0.005, 0.001, 0.004, 0.002, 0.010])

    def fn():
        clock[0] += next(durations)

    assert time_ms(fn, torch.device("cpu"), warmup=2, repeats=5) == pytest.approx(4.0)
    assert next(durations, None) is None  # every call was made


def test_cpu_goal_is_judged_on_the_base_preset_at_1_05x_dense():
    cpu = torch.device("cpu")

    def rows(ratio, preset="base"):
        return [BenchRow("step", preset, 64, "dense", 100.0, 1.0),
                BenchRow("step", preset, 64, "cast single", 100.0 * ratio, ratio)]

    def cpu_goal(rows, size):
        [goal] = [g for g in bench_steps._goals(rows, cpu, size) if g.name.startswith("CPU")]
        return goal.status, goal.detail

    assert cpu_goal(rows(1.04), "full") == ("PASS", "1.040x")
    assert cpu_goal(rows(1.06), "full") == ("FAIL", "1.060x")
    # the goal is about the base preset at --size full: other presets and sizes say nothing, whatever their ratio
    assert cpu_goal(rows(1.0, "tiny"), "full")[0] == "not measured"
    assert cpu_goal(rows(1.0), "ci")[0] == "not measured"
    assert cpu_goal(rows(1.0)[:1], "full")[0] == "not measured"  # no masked step was timed
    # stated for fp32: a bf16 run's ratio (masked bf16 copies cost more on CPU) judges nothing
    [goal] = [g for g in bench_steps._goals(rows(1.2), cpu, "full", torch.bfloat16) if g.name.startswith("CPU")]
    assert (goal.status, goal.detail) == ("not measured", "stated for fp32; this run used bf16 autocast")


def test_ci_bench_rows_and_goal_lines():
    result = run_bench(size="ci", device="cpu", warmup=0, repeats=1, modes=("cast",))
    layer = [r for r in result.rows if r.group == "layer"]
    assert {r.shape for r in layer} == {"64->64", "64->256", "256->64"}
    for shape in ("64->64", "64->256", "256->64"):
        dense = next(r for r in layer if r.shape == shape and r.variant == "dense")
        assert dense.ratio == 1.0 and dense.ms > 0 and dense.tflops > 0
        cast = {r.variant: r for r in layer if r.shape == shape and r.variant.startswith("cast")}
        assert set(cast) == {"cast single", "cast mixed-2", "cast mixed-4", "cast mixed-8"}
        assert all(r.ms > 0 and r.ratio > 0 for r in cast.values())
    steps = {r.variant: r for r in result.rows if r.group == "step"}
    assert set(steps) == {"dense", "dense (default AdamW)", "cast single", "cast mixed-2", "cast mixed-4",
                          "cast mixed-8"}
    assert steps["dense"].ratio == 1.0 and steps["dense"].shape == "tiny"
    for r in steps.values():
        assert r.fwd_bwd_ms > 0 and r.optim_ms > 0 and r.ratio > 0
    table = format_table(result)
    assert "skipped: needs a CUDA GPU with sparse tensor cores" in table
    assert "pending (no CUDA device): H100 bf16: single-language step <= 1.03x dense" in table
    assert "not measured: CPU: masked single-language step <= 1.05x dense" in table  # ci size: no verdict


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--no-step", "--warmup", "0", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cast mixed-4" in printed and "x dense" in printed
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and len(data["rows"]) == len([ln for ln in printed.splitlines()
                                                                  if ln.startswith(("layer", "2:4"))])
    assert [g["status"] for g in data["goals"]].count("pending (no CUDA device)") == 4
    with pytest.raises(ConfigError, match="unknown bench size 'huge'"):
        run_bench(size="huge")
    assert main(["bench", "--size", "ci", "--device", "cuda", "--no-layers"]) == (0 if torch.cuda.is_available()
                                                                                   else 1)
