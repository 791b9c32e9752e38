"""Exact properties of the encoder (tube, random) and decoder (running cell) masks."""

import pytest
import torch

from pipeline.data.masking import (
    MaskConfig,
    decoder_mask,
    make_masks,
    random_mask,
    running_cell_maps,
    running_cell_mask,
    token_grid,
    tube_mask,
)

GRID = (8, 14, 14)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_tube_mask_is_identical_over_time_with_exact_count():
    mask = tube_mask(16, GRID, 0.9, gen())
    assert mask.shape == (16, 8 * 196) and mask.dtype == torch.bool
    per_slot = mask.view(16, 8, 196)
    assert torch.equal(per_slot, per_slot[:, :1].expand_as(per_slot))
    assert (per_slot.sum(-1) == int(0.9 * 196)).all()
    assert len({tuple(m.tolist()) for m in per_slot[:, 0]}) > 1  # samples differ


def test_random_mask_counts_and_not_tubes():
    mask = random_mask(8, GRID, 0.9, gen())
    assert (mask.sum(1) == int(0.9 * 8 * 196)).all()
    per_slot = mask.view(8, 8, 196)
    assert not torch.equal(per_slot[:, 0], per_slot[:, 1])


def test_masks_are_deterministic_by_seed():
    assert torch.equal(tube_mask(4, GRID, 0.9, gen(3)), tube_mask(4, GRID, 0.9, gen(3)))
    assert not torch.equal(tube_mask(4, GRID, 0.9, gen(3)), tube_mask(4, GRID, 0.9, gen(4)))
    assert torch.equal(running_cell_mask(9, GRID, 0.5, gen(1)), running_cell_mask(9, GRID, 0.5, gen(1)))


def test_running_cell_half_keeps_each_position_in_half_the_slots_and_shifts():
    mask = running_cell_mask(32, GRID, 0.5, gen())
    per_slot = mask.view(32, 8, 196)
    assert (mask.sum(1) == 8 * 196 // 2).all()
    assert ((~per_slot).sum(1) == 4).all()  # every spatial position kept in exactly 4 of 8 slots
    assert all(not torch.equal(per_slot[:, t], per_slot[:, t + 1]) for t in range(7))  # shifts per slot
    assert torch.equal(per_slot[:, 0], per_slot[:, 4])  # period 4: a 4-position queue


def test_running_cell_has_exactly_four_maps_and_tiles_2x2():
    draws = running_cell_mask(400, GRID, 0.5, gen())
    assert len({tuple(m.tolist()) for m in draws}) == 4
    maps = running_cell_maps(GRID, 0.5).view(4, 8, 14, 14)
    assert torch.equal(maps, maps[..., :2, :2].repeat(1, 1, 7, 7))
    cells = maps[..., :2, :2].reshape(4, 8, 4)
    assert (cells.sum(-1) == 2).all()


def test_running_cell_matches_official_queue_rule():
    # Official Cell: queue [1, 1, 0, 0]; frame t of map k reads queue[(arange(4) + k + t + 1) % 4].
    maps = running_cell_maps((3, 2, 2), 0.5).view(4, 3, 4).int()
    queue = torch.tensor([1, 1, 0, 0])
    for k in range(4):
        for t in range(3):
            assert maps[k, t].tolist() == queue[(torch.arange(4) + k + t + 1) % 4].tolist()


@pytest.mark.parametrize("ratio,dropped", [(0.25, 1), (0.5, 2), (0.75, 3)])
def test_running_cell_ratios(ratio, dropped):
    mask = running_cell_mask(5, (4, 4, 6), ratio, gen())
    assert (mask.sum(1) == 4 * 24 * dropped // 4).all()


def test_running_cell_rejects_odd_grid_and_bad_ratio():
    with pytest.raises(ValueError, match="even"):
        running_cell_mask(2, (8, 7, 7), 0.5)
    with pytest.raises(ValueError, match="int\\(4 \\* ratio\\)"):
        running_cell_mask(2, GRID, 0.1)
    with pytest.raises(ValueError):
        tube_mask(2, GRID, 1.0)


def test_decoder_mask_ratio_zero_is_v1():
    enc = tube_mask(4, GRID, 0.9, gen())
    assert torch.equal(decoder_mask(enc, GRID, 0.0), ~enc)
    assert (decoder_mask(enc, GRID, 0.5, gen()).sum(1) == 8 * 98).all()


def test_make_masks_constant_shapes_and_seeded():
    cfg = MaskConfig(encoder_ratio=0.75, encoder_kind="random", decoder_ratio=0.5)
    enc, dec = make_masks(cfg, 3, GRID, gen())
    assert (enc.sum(1) == int(0.75 * 1568)).all() and (dec.sum(1) == 784).all()
    enc, dec = make_masks(MaskConfig(), 2, token_grid(16, 224, 16, 2), torch.Generator().manual_seed(0))
    assert enc.shape == dec.shape == (2, 1568)
    again = make_masks(MaskConfig(), 2, (8, 14, 14), torch.Generator().manual_seed(0))
    assert torch.equal(again[0], enc) and torch.equal(again[1], dec)
    with pytest.raises(ValueError, match="even"):
        make_masks(MaskConfig(), 2, (8, 7, 7))


def test_cached_running_cell_maps_cannot_be_written_through_results():
    """The 4 maps are built once per (grid, ratio); what callers get back is theirs to write into."""
    first = running_cell_mask(8, GRID, 0.5, gen())
    running_cell_maps(GRID, 0.5).fill_(False)
    running_cell_mask(8, GRID, 0.5, gen()).fill_(False)
    assert torch.equal(running_cell_mask(8, GRID, 0.5, gen()), first)
    assert running_cell_maps(GRID, 0.5).sum() == 4 * 8 * 196 // 2
