"""The editing stage on in-memory frames (what the JoyGen Edit node runs)."""

from __future__ import annotations

import pytest
import torch

from joygen_core.edit import editor
from joygen_core.edit.blend import blend_masks
from joygen_core.edit.models import load_edit_models
from joygen_core.edit.parsing import load_face_parser


@pytest.fixture(scope="module")
def setup(models_dir, face_frames):
    from joygen_core.morphable.reconstruct import load_recon_models, reconstruct

    recon = load_recon_models(models_dir / "BFM/BFM_model_front.mat",
                              models_dir / "face_recon_feat0.2_augment/epoch_20.pth")
    frames = torch.from_numpy(face_frames[:4].copy())
    track = reconstruct(frames, recon.detector, recon.regressor, recon.bfm)
    track.detected[2] = False  # a frame without a face in the middle
    edit = load_edit_models(models_dir / "joygen", models_dir / "sd-vae-ft-mse")
    parser = load_face_parser(models_dir / "face-parse-bisent/79999_iter.pth")
    audio = torch.randn(4, 50, 384, generator=torch.Generator().manual_seed(0))
    depth = torch.zeros(4, 256, 256)
    depth[:, 150:200, 90:170] = 0.8
    return frames, track, edit, parser, audio, depth


def test_pixels_outside_the_blend_mask_are_untouched(setup):
    frames, track, edit, parser, audio, depth = setup
    out = editor.edit_frames(edit, frames, track, audio, depth, parser=parser, blend="parsing", batch_size=2)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    masks = blend_masks(parser, frames, track.box)
    outside = (masks == 0)[..., None].expand_as(frames).clone()
    outside[2] = True  # no face: the whole frame passes through
    assert torch.equal(out[outside], frames[outside])
    assert torch.equal(out[2], frames[2])
    changed = (out.int() - frames.int()).abs().amax(-1) > 0
    assert changed[[0, 1, 3]].any() and bool((masks[[0, 1, 3]][changed[[0, 1, 3]]] > 0).all())


def test_depth_and_audio_drive_the_output(setup):
    frames, track, edit, parser, audio, depth = setup
    kw = {"blend": "box", "batch_size": 4}
    with_depth = editor.edit_frames(edit, frames, track, audio, depth, **kw)
    audio_only = editor.edit_frames(edit, frames, track, audio, None, **kw)
    other_audio = editor.edit_frames(edit, frames, track, audio.flip(0), depth, **kw)
    assert not torch.equal(with_depth, audio_only)
    assert not torch.equal(with_depth[[0, 1]], other_audio[[0, 1]])
    again = editor.edit_frames(edit, frames, track, audio, depth, **kw)
    assert torch.equal(with_depth, again)  # deterministic (posterior mean, no sampling)


def test_fixed_reference_frame(setup):
    frames, track, edit, _, audio, depth = setup
    same = editor.edit_frames(edit, frames, track, audio, depth, blend="box")
    fixed = editor.edit_frames(edit, frames, track, audio, depth, blend="box", reference_frame=0)
    d0 = (same[0].int() - fixed[0].int()).abs()  # frame 0 is its own reference either way (batching: +-1)
    d1 = (same[1].int() - fixed[1].int()).abs()
    assert d0.max() <= 2 and d1.float().mean() > 10 * d0.float().mean() + 0.01
    with pytest.raises(ValueError, match="reference frame 2 has no face"):
        editor.edit_frames(edit, frames, track, audio, depth, blend="box", reference_frame=2)


def test_length_mismatch_is_a_clear_error(setup):
    frames, track, edit, _, audio, depth = setup
    with pytest.raises(ValueError, match="fit them to the same length"):
        editor.edit_frames(edit, frames, track, audio[:3], depth, blend="box")


def test_edit_node_matches_the_library(pack, setup):
    from joygen_core.video.convert import uint8_to_image
    from joygen_pack.nodes.edit import JoyGenEdit

    frames, track, edit, parser, audio, depth = setup
    image_depth = depth[..., None].expand(-1, -1, -1, 3)
    (out,) = JoyGenEdit().edit(uint8_to_image(frames), track, edit, audio, "parsing", False, "same frame",
                               mouth_depth=image_depth, face_parser=parser, batch_size=4)
    lib = editor.edit_frames(edit, frames, track, audio, depth, parser=parser, blend="parsing", batch_size=4)
    assert torch.equal((out * 255).round().to(torch.uint8), lib)
    with pytest.raises(ValueError, match="Connect mouth_depth"):
        JoyGenEdit().edit(uint8_to_image(frames), track, edit, audio)


def test_progress_each_batch_with_the_latest_edited_frame(setup):
    frames, track, edit, parser, audio, depth = setup
    calls = []
    out = editor.edit_frames(edit, frames, track, audio, depth, blend="box", batch_size=2,
                             progress=lambda d, t, preview=None: calls.append((d, t, preview())))
    assert [c[:2] for c in calls] == [(2, 3), (3, 3)]  # 3 faces (frame 2 has none) in batches of 2
    assert torch.equal(torch.from_numpy(calls[0][2]), out[1]) and torch.equal(torch.from_numpy(calls[1][2]), out[3])
