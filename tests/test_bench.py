import json

import pytest
import torch

from lasp.bench import format_table, run_bench, time_ms
from lasp.cli import main
from lasp.errors import ConfigError


def test_time_ms_warms_up_then_takes_the_median():
    calls = []
    ms = time_ms(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and 0 <= ms < 1000


def test_ci_bench_rows_and_ratios():
    rows = run_bench(size="ci", device="cpu", warmup=0, repeats=1)
    layer = [r for r in rows if r.group == "layer"]
    assert {r.shape for r in layer} == {"64->64", "64->256", "256->64"}
    for shape in ("64->64", "64->256", "256->64"):
        dense = next(r for r in layer if r.shape == shape and r.variant == "dense")
        assert dense.ratio == 1.0 and dense.ms > 0
        ref = {r.variant: r for r in layer if r.shape == shape and r.variant.startswith("reference")}
        assert set(ref) == {"reference single", "reference mixed-2", "reference mixed-4", "reference mixed-8"}
        for r in ref.values():
            assert r.ms > 0 and r.ratio == pytest.approx(r.ms / dense.ms)
    fused = [r for r in rows if r.variant.startswith("fused")]
    assert fused and all(r.ms is None and "fused kernels need CUDA" in r.note for r in fused)
    steps = {r.variant: r for r in rows if r.group == "step"}
    assert steps["dense"].ratio == 1.0 and steps["reference mixed-4"].ms > 0 and steps["dense"].shape == "tiny"
    assert "skipped: needs a CUDA GPU with sparse tensor cores" in format_table(rows)


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--no-step", "--warmup", "0", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reference mixed-4" in printed and "x dense" in printed
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and len(data["rows"]) == len([ln for ln in printed.splitlines()
                                                                  if ln.startswith(("layer", "2:4"))])
    with pytest.raises(ConfigError, match="unknown bench size 'huge'"):
        run_bench(size="huge")
    assert main(["bench", "--size", "ci", "--device", "cuda", "--no-layers"]) == (0 if torch.cuda.is_available()
                                                                                   else 1)
