import pytest
import torch

from lasp.masks.bits import pack_bits, packed_shape, popcount, unpack_bits


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 13), (4, 16), (2, 3, 17)])
def test_roundtrip_and_size(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand(shape, generator=gen) > 0.4
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8
    assert tuple(packed.shape) == packed_shape(shape)
    assert torch.equal(unpack_bits(packed, shape), mask)
    assert popcount(packed) == int(mask.sum())


def test_bit_order_is_little_endian_along_rows():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 0] = mask[0, 9] = mask[1, 3] = True
    packed = pack_bits(mask)
    assert packed.tolist() == [[1, 2], [8, 0]]


def test_wrong_packed_shape_is_rejected():
    with pytest.raises(ValueError, match="does not match"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), (2, 8))
