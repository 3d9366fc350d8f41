"""overlap_analysis files and the `lasp overlap` command."""
import json

import torch

from lasp.analysis.overlap_report import overlap_analysis
from lasp.cli import main
from lasp.masks.language_masks import LanguageMasks

SHAPES = {f"encoder.layers.{i}.{m}.weight": (24, 16) for i in range(3)
          for m in ("attention.q_proj", "attention.k_proj", "feed_forward.intermediate_dense")}
LANGS = ["es", "it", "de", "nl"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def masks(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {lang: {n: torch.rand(s, generator=g) < 0.5 for n, s in SHAPES.items()} for lang in LANGS}


def test_overlap_analysis_writes_tables_and_plots(tmp_path):
    families = {"es": "romance", "it": "romance", "de": "germanic", "nl": "germanic"}
    result = overlap_analysis(masks(), tmp_path / "out", families=families, n_permutations=50)
    pngs = ["iou_heatmap", "lass_heatmap", "layer_curves", "dendrogram", "sharing_histogram"]
    for key in pngs:
        path = result.files[key]
        with open(path, "rb") as handle:
            data = handle.read()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, key
        assert path in result.summary, key  # the printed summary points at every plot
    data = json.loads((tmp_path / "out" / "overlap.json").read_text())
    assert data["languages"] == LANGS
    assert data["iou"] == result.iou
    assert set(data["per_layer"]) == {"0", "1", "2"}
    assert data["families"]["n_within_pairs"] == 2
    rows = (tmp_path / "out" / "per_layer.csv").read_text().splitlines()
    assert rows[0].startswith("layer,lang_a,lang_b,numel,kept_a,kept_b,intersection,union,iou")
    assert len(rows) == 1 + 3 * 6  # 3 layers × 6 pairs
    assert (tmp_path / "out" / "summary.txt").read_text().strip() == result.summary
    assert "families: mean IoU within" in result.summary


def test_overlap_analysis_with_one_language_skips_pairwise_parts(tmp_path):
    single = {"es": masks()["es"]}
    result = overlap_analysis(single, tmp_path, plots=True)
    assert result.iou == [[1.0]]
    assert result.clustering is None and "dendrogram" not in result.files
    assert result.sharing["unique"] == 0 and result.sharing["shared_by_all"] == result.kept[0]


def test_overlap_command_prints_summary_and_files(tmp_path, capsys):
    LanguageMasks.from_dense(masks(), base_model="tiny").save(tmp_path / "masks")
    (tmp_path / "fam.yaml").write_text("es: romance\nit: romance\nde: germanic\nnl: germanic\n")
    code = main(["masks", "overlap", str(tmp_path / "masks"), "--out", str(tmp_path / "o"),
                 "--families", str(tmp_path / "fam.yaml"), "--permutations", "20"])
    out = capsys.readouterr().out
    assert code == 0
    assert "pairwise IoU" in out and "permutation p =" in out
    assert str(tmp_path / "o" / "iou_heatmap.png") in out
    assert (tmp_path / "o" / "dendrogram.png").stat().st_size > 0


def test_overlap_command_reports_user_errors_in_one_line(tmp_path, capsys):
    LanguageMasks.from_dense(masks(), base_model="tiny").save(tmp_path / "masks")
    (tmp_path / "fam.yaml").write_text("es: romance\nit: romance\n")
    code = main(["masks", "overlap", str(tmp_path / "masks"), "--out", str(tmp_path / "o"),
                 "--families", str(tmp_path / "fam.yaml")])
    err = capsys.readouterr().err
    assert code == 1 and "de" in err and "nl" in err and len(err.strip().splitlines()) == 1
    code = main(["masks", "overlap", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 1 and "nowhere" in capsys.readouterr().err


def test_overlap_command_rejects_unknown_language(tmp_path, capsys):
    LanguageMasks.from_dense(masks(), base_model="tiny").save(tmp_path / "masks")
    assert main(["masks", "overlap", str(tmp_path / "masks"), "--out", str(tmp_path / "o"), "--languages", "es,xx"]) == 1
    assert "'xx'" in capsys.readouterr().err
