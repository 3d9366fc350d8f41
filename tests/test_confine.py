"""The restore step of ConfinedOptimizer is bit-exact for every floating dtype, special values included."""
import pytest
import torch

from lasp.masked.confine import _restore_outside


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_restore_outside_is_bitwise_and_keeps_special_values(dtype):
    gen = torch.Generator().manual_seed(0)
    shape = (37, 19)
    inside = torch.rand(shape, generator=gen) < 0.5
    current = torch.randn(shape, generator=gen).to(dtype)
    saved = torch.randn(shape, generator=gen).to(dtype)
    specials = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")], dtype=dtype)
    current.view(-1)[:4], saved.view(-1)[4:8] = specials, specials
    state, state_saved = current * 3, saved * 3
    expected = [torch.where(inside, c, s) for c, s in ((current, saved), (state, state_saved))]

    _restore_outside(inside, [(current, saved.clone()), (state, state_saved.clone())])

    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[current.element_size()]
    for got, want in zip((current, state), expected):
        assert torch.equal(got.view(as_int), want.view(as_int))  # bit patterns, so NaN and -0.0 count
