"""Recipe-controlled CPU settings: threads and oneDNN kernels are applied by every stage."""
import pytest
import torch

from lasp.config.recipe import load_recipe
from lasp.errors import ConfigError
from lasp.train.setup import start_stage


@pytest.fixture
def restore_cpu_settings():
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn


def test_stage_start_applies_threads_and_onednn(restore_cpu_settings):
    start_stage(load_recipe(None, ["threads=1", "cpu_onednn=false", "device=cpu"]))
    assert torch.get_num_threads() == 1 and torch.backends.mkldnn.enabled is False
    start_stage(load_recipe(None, ["device=cpu"]))
    assert torch.backends.mkldnn.enabled is True  # the default keeps torch's choice


def test_cpu_onednn_must_be_a_boolean():
    with pytest.raises(ConfigError, match="cpu_onednn"):
        load_recipe(None, ["cpu_onednn=sometimes"])

