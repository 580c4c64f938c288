"""Per-frame feature windows at any fps, and the overlapping 30 s analysis windows."""

from __future__ import annotations

import pytest
import torch

from joygen_core.audio.windows import blend_weights, frame_centres, frame_windows, plan_windows


@pytest.mark.parametrize(
    "fps, expected",
    [
        (25.0, [0, 2, 4, 6, 8, 10, 12]),  # 50/25 = 2 rows per frame
        (30.0, [0, 1, 3, 5, 6, 8, 10]),  # 1.67, 3.33, 5, 6.67, 8.33, 10
        (29.97, [0, 1, 3, 5, 6, 8, 10]),  # 1.668, 3.337, 5.005, 6.673, 8.342, 10.01
        (24.0, [0, 2, 4, 6, 8, 10, 12]),  # 2.08, 4.17, 6.25, 8.33, 10.42, 12.5
        (60.0, [0, 0, 1, 2, 3, 4, 5]),  # 0.83, 1.67, 2.5, 3.33, 4.17, 5
    ],
)
def test_frame_centres_hand_computed(fps, expected):
    assert frame_centres(7, fps).tolist() == expected


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97, 30000 / 1001, 24.0, 23.976, 60.0, 12.5])
def test_frame_centres_match_official_python_int(fps):
    # the official computes int(vid_idx * 50 / fps) in Python floats; must agree everywhere, incl. 10^5 frames
    n = 100_000
    ours = frame_centres(n, fps)
    assert ours.tolist() == [int(i * 50 / fps) for i in range(n)]


def test_frame_centres_ntsc_far_frames():
    # hand-computed far into a 29.97 video: frame 899 is at 29.996 s -> row int(1499.83) = 1499
    assert frame_centres(900, 29.97)[899].item() == 1499
    assert frame_centres(1801, 24.0)[1800].item() == 3750


def test_frame_windows_rows_and_clamping():
    idx = frame_windows(3, 25.0, length=7)
    assert idx[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]  # c=0: rows -4..5 clamped at 0
    assert idx[1].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 6]  # c=2: -2..7 clamped both sides
    assert idx[2].tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6]  # c=4
    far = frame_windows(1000, 30.0, length=100)
    assert far.max().item() == 99 and far.min().item() == 0


def test_plan_windows_short_is_one_official_window():
    assert plan_windows(1234) == [(0, 1234)]
    assert plan_windows(3000) == [(0, 3000)]


@pytest.mark.parametrize("length", [3002, 4500, 7500, 9000, 17998, 30000])
def test_plan_windows_cover_and_overlap(length):
    w = plan_windows(length, 3000, 2000, align=2)
    assert w[0][0] == 0 and w[-1][1] == length
    assert all(e - s == 3000 for s, e in w)  # never padded when the audio is longer than a window
    assert all(s % 2 == 0 for s, _ in w)
    for (s0, e0), (s1, _) in zip(w, w[1:]):
        assert s1 > s0 and s1 - s0 <= 2000 and e0 - s1 >= 1000  # at least 10 s of overlap


def test_blend_weights_partition_of_unity_and_continuity():
    length = 7500
    w = plan_windows(length, 3000, 2000)
    weights = blend_weights(w, length, scale=2)
    total = torch.zeros(length // 2)
    for (s, _), ww in zip(w, weights):
        total[s // 2: s // 2 + ww.shape[0]] += ww
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    # each window's weight is ~0 at a cut edge, so no row switches source abruptly
    for (s, e), ww in zip(w, weights):
        if s > 0:
            assert ww[0] < 0.01
        if e < length:
            assert ww[-1] < 0.01
