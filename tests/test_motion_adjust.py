"""Motion from a video's face track and the motion adjustments, on cases with known answers.

Re-timing is checked against numpy's linear interpolation and against the continuous curve it samples;
the adjustments against what they promise: the identity at the defaults, the mean at amplitude 0, a shift
of k frames as indexing by k, a cutoff in Hz that means the same at 25 and 60 fps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from joygen_core.errors import InputError
from joygen_core.face.track import FaceTrack
from joygen_core.motion.adjust import adjust_motion, fill_gaps, mix, motion_from_track, retime, shift, smooth
from joygen_core.motion.types import Motion


def _curve(t: np.ndarray) -> np.ndarray:
    """A smooth 64-channel expression curve over time t (seconds): slow sines, a different phase per channel."""
    k = np.arange(64)
    return 0.5 * np.sin(2 * np.pi * (0.7 + 0.02 * k)[None, :] * t[:, None] + k[None, :])


def _track(n: int, fps: float | None, seed: int = 0) -> FaceTrack:
    g = torch.Generator().manual_seed(seed)
    track = FaceTrack.empty(n, (64, 64), fps=fps)
    track.detected[:] = True
    track.coeffs = torch.randn(n, 257, generator=g)
    return track


# ---------------------------------------------------------------- motion from video


def test_same_fps_reproduces_the_expressions_exactly():
    track = _track(37, 30.0)
    motion = motion_from_track(track)
    assert motion.fps == 30.0 and len(motion) == 37
    assert torch.equal(motion.exp, track.coeffs[:, 80:144])
    assert motion.meta["notes"] == []
    same = motion_from_track(track, target_fps=30.0, num_frames=37)
    assert torch.equal(same.exp, track.coeffs[:, 80:144])


def test_other_fps_is_linear_interpolation_in_time():
    fps, target, n = 30.0, 25.0, 90
    track = _track(n, fps)
    track.coeffs[:, 80:144] = torch.from_numpy(_curve(np.arange(n) / fps)).float()
    motion = motion_from_track(track, target_fps=target)
    assert len(motion) == 75 and motion.fps == target  # the same 3 s
    t_out = np.arange(75) / target
    src = track.coeffs[:, 80:144].double().numpy()
    expected = np.stack([np.interp(t_out, np.arange(n) / fps, src[:, c]) for c in range(64)], 1)
    assert np.allclose(motion.exp.numpy(), expected, atol=1e-6)
    # within the interpolation error of the continuous curve: h^2/8 * max|f''|
    bound = (1 / fps) ** 2 / 8 * 0.5 * (2 * np.pi * 1.96) ** 2
    assert np.abs(motion.exp.numpy() - _curve(t_out)).max() <= bound + 1e-6
    notes = motion.meta["notes"]
    assert any("re-timed 90 frames at 30 fps" in note and "75 frames at 25 fps" in note for note in notes)


def test_longer_frame_count_holds_the_last_frame_and_says_so():
    track = _track(10, 25.0)
    motion = motion_from_track(track, num_frames=14)
    assert torch.equal(motion.exp[:10], track.coeffs[:, 80:144])
    assert torch.equal(motion.exp[10:], track.coeffs[9:10, 80:144].expand(4, -1))
    assert any("last 4 frames hold" in note for note in motion.meta["notes"])


def test_frames_without_a_face_are_interpolated_and_edges_held():
    track = _track(12, 25.0)
    track.detected[[0, 1, 5, 6, 7, 11]] = False
    track.coeffs[~track.detected] = 0.0  # what the track holds there
    exp = track.coeffs[:, 80:144]
    motion = motion_from_track(track)
    out = motion.exp
    assert torch.equal(out[0], exp[2]) and torch.equal(out[1], exp[2])  # start: held
    assert torch.equal(out[11], exp[10])  # end: held
    for i, w in ((5, 0.25), (6, 0.5), (7, 0.75)):  # the gap 5..7 between faces at 4 and 8
        assert torch.allclose(out[i], exp[4] * (1 - w) + exp[8] * w, atol=1e-6)
    kept = track.detected
    assert torch.equal(out[kept], exp[kept])
    note = " ".join(motion.meta["notes"])
    assert "6 of 12 frames had no face (3 gaps)" in note and "2 at the start" in note and "1 at the end" in note


def test_a_track_without_any_face_is_refused():
    track = FaceTrack.empty(8, (64, 64), fps=25.0)
    with pytest.raises(InputError, match="No frame of the face track has a face"):
        motion_from_track(track)


def test_unknown_track_fps_is_taken_as_25_and_said():
    motion = motion_from_track(_track(5, None))
    assert motion.fps == 25.0 and "taken as 25 fps" in motion.meta["notes"][0]


def test_fill_gaps_works_on_any_trailing_shape():
    values = torch.arange(5.0)[:, None, None].expand(5, 2, 3).clone()
    present = torch.tensor([True, False, False, True, True])
    values[~present] = -1
    filled, notes = fill_gaps(values, present)
    assert torch.allclose(filled[:, 0, 0], torch.arange(5.0))
    assert "2 of 5 frames had no face (1 gap)" in notes[0]


# ---------------------------------------------------------------- adjustments


def _motion(n: int = 50, fps: float = 25.0, seed: int = 1) -> Motion:
    return Motion(torch.randn(n, 64, generator=torch.Generator().manual_seed(seed)), fps, {"seed": seed})


def test_defaults_are_the_identity():
    m = _motion()
    out = adjust_motion(m, amplitude=1.0, smoothing_hz=0.0, shift_frames=0.0)
    assert torch.equal(out.exp, m.exp) and out.fps == m.fps
    assert out.meta["notes"] == [] and out.meta["seed"] == 1
    assert out.exp.data_ptr() != m.exp.data_ptr()  # a copy: the input is never changed in place


def test_amplitude_scales_around_the_mean_expression():
    m = _motion()
    mean = m.exp.mean(0)
    zero = adjust_motion(m, amplitude=0.0)
    assert torch.allclose(zero.exp, mean.expand_as(m.exp), atol=1e-6)
    double = adjust_motion(m, amplitude=2.0)
    assert torch.allclose(double.exp - mean, 2 * (m.exp - mean), atol=1e-5)
    assert "amplitude x2" in double.meta["notes"][0]


@pytest.mark.parametrize("k", [3, -2, 7])
def test_integer_shift_is_indexing(k):
    m = _motion(20)
    out, notes = shift(m.exp, k, m.fps)
    idx = (torch.arange(20) - k).clamp(0, 19)
    assert torch.equal(out, m.exp[idx])
    assert f"{abs(k)} frame" in notes[0] and ("later" if k > 0 else "earlier") in notes[0]


def test_fractional_shift_interpolates():
    m = _motion(10)
    out, _ = shift(m.exp, 0.5)
    assert torch.allclose(out[1:], (m.exp[:-1] + m.exp[1:]) / 2, atol=1e-6)
    assert torch.equal(out[0], m.exp[0])


@pytest.mark.parametrize("k, edge", [(10, 0), (250.5, 0), (-10, -1), (-1000, -1)])
def test_shift_longer_than_the_clip_holds_the_edge_frame(k, edge):
    m = _motion(10)
    out = adjust_motion(m, shift_frames=k)
    assert torch.equal(out.exp, m.exp[edge].expand(10, -1))
    assert "every frame holds the" in out.meta["notes"][-1]


def _sines(fps: float, seconds: float, freqs: dict[float, float]) -> tuple[np.ndarray, torch.Tensor]:
    t = np.arange(int(round(seconds * fps))) / fps
    x = sum(a * np.sin(2 * np.pi * f * t) for f, a in freqs.items())
    return t, torch.from_numpy(np.repeat(x[:, None], 64, 1)).float()


@pytest.mark.parametrize("fps", [25.0, 60.0])
def test_smoothing_cutoff_is_in_hertz_at_any_fps(fps):
    t, x = _sines(fps, 8.0, {0.5: 1.0, 8.0: 0.5})
    out, notes = smooth(x, fps, 3.0)
    slow = np.sin(2 * np.pi * 0.5 * t)
    mid = (t > 1) & (t < 7)  # away from the edges
    assert np.abs(out[:, 0].numpy()[mid] - slow[mid]).max() < 0.03  # 8 Hz gone, 0.5 Hz kept, no lag
    assert "3 Hz" in notes[0]
    # at the cutoff a sine keeps half its amplitude (Butterworth -3 dB, run forward and backward)
    _, at = _sines(fps, 8.0, {3.0: 1.0})
    peak = np.abs(smooth(at, fps, 3.0)[0][:, 0].numpy()[mid]).max()
    assert abs(peak - 0.5) < 0.03


def test_smoothing_same_result_at_25_and_60_fps():
    """The same continuous motion sampled at 25 and 60 fps, smoothed at 2 Hz: the same curve at common times."""
    out = {}
    for fps in (25.0, 60.0):
        _, x = _sines(fps, 6.0, {0.8: 1.0, 2.0: 0.5, 9.0: 0.4})
        out[fps] = smooth(x, fps, 2.0)[0][:, 0].numpy()
    common_25, common_60 = out[25.0][25:125:5], out[60.0][60:300:12]  # t = 1.0, 1.2, ... 4.8 s
    assert np.abs(common_25 - common_60).max() < 0.02


def test_smoothing_zero_is_off_negative_is_an_error_and_nyquist_is_a_no_op():
    m = _motion()
    assert torch.equal(smooth(m.exp, 25.0, 0.0)[0], m.exp)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="0 \\(off\\) or a positive frequency"):
            adjust_motion(m, smoothing_hz=bad)
    out = adjust_motion(m, smoothing_hz=12.5)
    assert torch.equal(out.exp, m.exp) and "half the frame rate (12.5 Hz)" in out.meta["notes"][0]


def test_smoothing_short_clips():
    for n in (1, 2, 5):
        out, _ = smooth(torch.ones(n, 64), 25.0, 4.0)
        assert out.shape == (n, 64) and torch.allclose(out, torch.ones(n, 64), atol=1e-6)


def test_mix_retimes_the_second_motion_and_says_so():
    a = _motion(50, 25.0)
    t = np.arange(60) / 30.0
    b = Motion(torch.from_numpy(_curve(t)).float(), 30.0)
    out = mix(a, b, 0.25)
    assert len(out) == 50 and out.fps == 25.0
    b25 = retime(b.exp, 30.0, 25.0, 50)[0]
    assert torch.allclose(out.exp, 0.75 * a.exp + 0.25 * b25, atol=1e-6)
    assert any("second motion: re-timed 60 frames at 30 fps" in n for n in out.meta["notes"])
    assert torch.equal(mix(a, b, 0.0).exp, a.exp)
    assert torch.equal(mix(a, b, 1.0).exp, b25)
    with pytest.raises(InputError, match="between 0"):
        mix(a, b, 1.5)


def test_mix_of_equal_motions_states_no_retiming():
    a, b = _motion(20, seed=1), _motion(20, seed=2)
    out = adjust_motion(a, other=b, mix_weight=0.5)
    assert torch.allclose(out.exp, (a.exp + b.exp) / 2)
    assert not any("re-timed" in n for n in out.meta["notes"])


# ---------------------------------------------------------------- nodes


def test_motion_from_video_node(pack):
    from joygen_pack.nodes.motion import JoyGenMotionFromVideo

    track = _track(60, 30.0)
    track.detected[10:14] = False
    motion, n, info = JoyGenMotionFromVideo().run(track, 25.0, 0)
    assert n == len(motion) == 50 and motion.fps == 25.0
    assert "re-timed 60 frames at 30 fps" in info and "4 of 60 frames had no face" in info
    motion, n, info = JoyGenMotionFromVideo().run(track, 30.0, 0, source_fps=30.0)
    assert n == 60 and torch.equal(motion.exp[track.detected], track.coeffs[track.detected, 80:144])


def test_adjust_motion_node(pack):
    from joygen_pack.nodes.motion import JoyGenAdjustMotion

    a = _motion(40)
    out, info = JoyGenAdjustMotion().run(a)
    assert torch.equal(out.exp, a.exp) and "unchanged" in info
    b = Motion(torch.zeros(48, 64), 30.0)
    out, info = JoyGenAdjustMotion().run(a, 1.0, 0.0, 2.0, motion_b=b, mix=0.5)
    assert len(out) == 40 and "re-timed 48 frames at 30 fps" in info and "shifted by +2 frames" in info
    assert torch.allclose(out.exp[2:], a.exp[:-2] / 2, atol=1e-6)
    with pytest.raises(InputError):
        JoyGenAdjustMotion().run(a, 1.0, -3.0, 0.0)


def test_adjust_output_drives_depth_rendering_shapes():
    """What the pipeline would apply: amplitude and shift keep the frame count and fps."""
    m = _motion(33, 29.97)
    out = adjust_motion(m, amplitude=1.3, shift_frames=-1.5)
    assert out.exp.shape == (33, 64) and out.exp.dtype == torch.float32 and math.isclose(out.fps, 29.97)


def test_video_driven_chain_motion_from_video_into_render_depth(pack):
    """A 30 fps driver's face track drives the mouth depth of a 25 fps video: Motion from Video -> Render Depth."""
    from types import SimpleNamespace

    from test_node_depth import small_bfm, small_track

    from joygen_pack.nodes.depth import JoyGenRenderDepth
    from joygen_pack.nodes.motion import JoyGenMotionFromVideo

    target = small_track(4)  # 25 fps; frame 1 has no face
    driver = _track(5, 30.0)
    driver.coeffs[:, 80:144] = 0
    driver.coeffs[2:, 80] = 1.0  # the driver's mouth opens from 0.067 s on
    motion, n, info = JoyGenMotionFromVideo().run(driver, 25.0, len(target))
    assert n == 4 and torch.allclose(motion.exp[:, 0], torch.tensor([0.0, 0.2, 1.0, 1.0]))
    assert "re-timed 5 frames at 30 fps" in info
    mouth, _ = JoyGenRenderDepth().render(target, SimpleNamespace(bfm=small_bfm()), "torch", motion=motion)
    assert mouth.shape[0] == 4 and float(mouth[1].abs().max()) == 0  # no face: black
    assert not torch.equal(mouth[0], mouth[2]) and torch.equal(mouth[2], mouth[3])  # closed vs open; same open
