import pytest
import torch
import torch.nn as nn

from lasp.errors import ConfigError, MaskError
from lasp.masked.kernels.semi_structured import check_2to4, export_semi_structured, is_2to4, sparsify_linear


def test_check_2to4_accepts_pruner_masks_and_names_the_bad_group():
    from lasp.search.pruning import prune

    scores = {"encoder.layers.0.attention.q_proj.weight": torch.rand(8, 16, generator=torch.Generator()
                                                                     .manual_seed(0))}
    mask = prune(scores, 0.5, pattern="2:4")["encoder.layers.0.attention.q_proj.weight"]
    assert is_2to4(mask) and mask.sum() == 64
    mask[3, 9] = True
    mask[3, 10] = True
    mask[3, 11] = True
    with pytest.raises(MaskError, match=r"^q: row 3, columns 8\.\.11 keep [34] of 4 weights"):
        check_2to4(mask, "q")
    with pytest.raises(MaskError, match="in-features 6 is not a multiple of 4"):
        check_2to4(torch.zeros(2, 6, dtype=torch.bool), "k")
    # fewer than 2 kept in a group is still a valid 2:4 layout
    assert is_2to4(torch.zeros(4, 8, dtype=torch.bool))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_export_needs_sparse_tensor_cores(tiny_ctc, random_masks):
    from lasp.masked.model import MaskedModel

    with pytest.raises(ConfigError, match="needs a CUDA GPU with sparse tensor cores"):
        export_semi_structured(MaskedModel(tiny_ctc, random_masks), "es")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        sparsify_linear(nn.Linear(64, 64), "x")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs a GPU with sparse tensor cores")
def test_sparsified_linear_matches_dense_on_gpu():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64).cuda().half()
    mask = torch.zeros(64, 128, dtype=torch.bool, device="cuda")
    mask[:, 0::4] = True
    mask[:, 3::4] = True
    with torch.no_grad():
        lin.weight.mul_(mask)
    x = torch.randn(32, 128, device="cuda", dtype=torch.half)
    dense = lin(x)
    sparsify_linear(lin, "lin")
    torch.testing.assert_close(lin(x), dense, rtol=1e-2, atol=1e-2)
