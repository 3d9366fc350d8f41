"""Both analysis notebooks execute top to bottom (nbclient), from a scratch directory."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.e2e

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _ensure_kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True,
                       capture_output=True)
    return "python3"


@pytest.mark.parametrize("name", ["overlap_analysis.ipynb", "parameter_budget.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    # Committed without outputs, so the diff of a notebook is its code.
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("LASP_NOTEBOOK_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("LASP_MASK_DIR", raising=False)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name=_ensure_kernel(),
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    if os.environ.get("LASP_KEEP_NOTEBOOKS"):
        nbformat.write(nb, os.path.join(os.environ["LASP_KEEP_NOTEBOOKS"], name))
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if name == "overlap_analysis.ipynb":
        assert images == 4  # heatmap, layer curves, sharing histogram, dendrogram
        assert "pairwise IoU" in text and "p = " in text
        assert (tmp_path / "runs" / "overlap_analysis" / "report" / "iou_heatmap.png").stat().st_size > 0
    else:
        assert images == 2  # storage bars, growth with N
        assert "MMS adapters, d=16: 860,544 parameters per language" in text
        assert (tmp_path / "runs" / "parameter_budget" / "xlsr-53" / "params.png").stat().st_size > 0
