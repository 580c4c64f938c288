"""Depth augmentations for training: displacement by about +-2% and dropping, batched and seeded."""

from __future__ import annotations

import torch

from joygen_core.render.augment import displace_mouth_depth, drop_depth


def test_displacement_moves_content_by_the_reported_offset():
    B = 64
    d = torch.zeros(B, 256, 256)
    d[:, 150:170, 100:140] = torch.arange(1, B + 1).float()[:, None, None]
    out, off = displace_mouth_depth(d, generator=torch.Generator().manual_seed(0))
    assert off.shape == (B, 2) and off.abs().max() <= 5 and off.abs().max() >= 4  # +-2% of 256 = 5 px
    assert len({tuple(o) for o in off.tolist()}) > 10  # per-sample offsets
    for b in range(0, B, 7):
        dx, dy = off[b].tolist()
        expect = torch.zeros(256, 256)
        expect[150 + dy:170 + dy, 100 + dx:140 + dx] = b + 1
        assert torch.equal(out[b], expect)
    again, off2 = displace_mouth_depth(d, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out) and torch.equal(off, off2)


def test_displacement_zero_fills_at_the_border_and_keeps_channels():
    d = torch.ones(8, 3, 32, 32)
    out, off = displace_mouth_depth(d, max_fraction=0.1, generator=torch.Generator().manual_seed(1))
    assert out.shape == d.shape
    for b in range(8):
        dx, dy = off[b].tolist()
        assert out[b].sum() == 3 * (32 - abs(dx)) * (32 - abs(dy))
        assert torch.equal(out[b, 0], out[b, 2])


def test_drop_depth_fraction_and_seed():
    d = torch.rand(1000, 4, 4) + 0.1
    out, keep = drop_depth(d, 0.5, generator=torch.Generator().manual_seed(0))
    assert 400 < int(keep.sum()) < 600
    assert (out[~keep] == 0).all() and torch.equal(out[keep], d[keep])
    out2, keep2 = drop_depth(d, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep, keep2)
    _, keep3 = drop_depth(d[:10], 0.3, generator=torch.Generator().manual_seed(5), exact=True)
    assert int((~keep3).sum()) == 3
    _, none = drop_depth(d[:10], 0.0)
    assert none.all()
