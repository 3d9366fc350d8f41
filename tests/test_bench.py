import json

import pytest
import torch

from lasp.bench.steps import format_table, run_bench, time_ms
from lasp.cli import main
from lasp.errors import ConfigError


def test_time_ms_warms_up_then_takes_the_median():
    calls = []
    ms = time_ms(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and 0 <= ms < 1000


def test_ci_bench_rows_ratios_and_goal_lines():
    result = run_bench(size="ci", device="cpu", warmup=0, repeats=1, modes=("cast",))
    layer = [r for r in result.rows if r.group == "layer"]
    assert {r.shape for r in layer} == {"64->64", "64->256", "256->64"}
    for shape in ("64->64", "64->256", "256->64"):
        dense = next(r for r in layer if r.shape == shape and r.variant == "dense")
        assert dense.ratio == 1.0 and dense.ms > 0 and dense.tflops > 0
        cast = {r.variant: r for r in layer if r.shape == shape and r.variant.startswith("cast")}
        assert set(cast) == {"cast single", "cast mixed-2", "cast mixed-4", "cast mixed-8"}
        for r in cast.values():
            assert r.ms > 0 and r.ratio == pytest.approx(r.ms / dense.ms)
    steps = {r.variant: r for r in result.rows if r.group == "step"}
    assert set(steps) == {"dense", "dense (default AdamW)", "cast single", "cast mixed-2", "cast mixed-4",
                          "cast mixed-8"}
    assert steps["dense"].ratio == 1.0 and steps["dense"].shape == "tiny"
    for r in steps.values():
        assert r.fwd_bwd_ms > 0 and r.optim_ms > 0 and r.ms == pytest.approx(r.ratio * steps["dense"].ms)
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
    assert [g["status"] for g in data["goals"]].count("pending (no CUDA device)") == 3
    with pytest.raises(ConfigError, match="unknown bench size 'huge'"):
        run_bench(size="huge")
    assert main(["bench", "--size", "ci", "--device", "cuda", "--no-layers"]) == (0 if torch.cuda.is_available()
                                                                                   else 1)
