"""The README's distributed command path: `torchrun --nproc_per_node 2 -m lasp finetune RECIPE` on CPU (gloo)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lasp.config.recipe import save_recipe
from test_train_support import fast_recipe, make_corpus

pytestmark = pytest.mark.e2e

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_finetune_lasp(tmp_path):
    manifests = make_corpus(tmp_path, langs=("es", "de"), n_train=4, n_test=1)
    cfg = fast_recipe(tmp_path, manifests, "finetune.system=lasp", "finetune.max_steps=3", "finetune.ckpt_every=3",
                      "finetune.init=tiny", "finetune.mask_time_prob=0.0", "finetune.export_languages=true")
    recipe = save_recipe(cfg, tmp_path / "recipe.yaml")
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "lasp", "finetune", str(recipe)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("fine-tuned model:") == 1  # printed by rank 0 only
    final = tmp_path / "runs" / "finetune-lasp" / "final"
    summary = json.loads((final / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["skipped_nonfinite"] == 0
    # the checkpoint records both ranks' sampler and RNG state
    from lasp.train.checkpoint import latest_checkpoint, load_checkpoint

    _, state = load_checkpoint(latest_checkpoint(tmp_path / "runs" / "finetune-lasp"))
    assert len(state["ranks"]) == 2 and state["step"] == 3
    assert (final / "es" / "config.json").is_file() and (final / "de" / "config.json").is_file()
    weights = load_file(str(final / "shared" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
