"""The 3DMM nodes as ComfyUI calls them: the loader over the models folder, the reconstruct node."""

from __future__ import annotations

import pytest
import torch

from joygen_core.errors import ModelFileError
from joygen_core.face.track import FaceTrack


@pytest.fixture
def joygen_models(monkeypatch, models_dir):
    monkeypatch.setenv("JOYGEN_MODELS", str(models_dir))
    return models_dir


def test_loader_lists_files_and_loads(pack, joygen_models):
    from joygen_pack.nodes.reconstruct import JoyGenLoad3DMMModels

    spec = JoyGenLoad3DMMModels.INPUT_TYPES()["required"]
    assert "BFM/BFM_model_front.mat" in spec["bfm"][0]
    assert "face_recon_feat0.2_augment/epoch_20.pth" in spec["regressor"][0]
    (models,) = JoyGenLoad3DMMModels().load("BFM/BFM_model_front.mat", "face_recon_feat0.2_augment/epoch_20.pth",
                                            "cpu")
    assert models.bfm.mp468 is not None and models.bfm.num_vertices == 35709
    with pytest.raises(ModelFileError, match="Missing model file"):
        JoyGenLoad3DMMModels().load("BFM/nothing.mat", "face_recon_feat0.2_augment/epoch_20.pth", "cpu")


def test_reconstruct_node(pack, joygen_models, face_frames):
    from joygen_pack.nodes.reconstruct import JoyGen3DMMReconstruct, JoyGenLoad3DMMModels

    (models,) = JoyGenLoad3DMMModels().load("BFM/BFM_model_front.mat", "face_recon_feat0.2_augment/epoch_20.pth",
                                            "cpu")
    images = torch.from_numpy(face_frames[:6]).float() / 255
    images[2] = 0
    rgba = torch.cat([images, torch.ones_like(images[..., :1])], -1)
    track, preview = JoyGen3DMMReconstruct().reconstruct(rgba, models, "track", True, fps=25.0, batch_size=4)
    assert isinstance(track, FaceTrack) and track.detected.tolist() == [True, True, False, True, True, True]
    assert track.fps == 25.0 and track.meta["policy"] == "track" and track.meta["smoothed"]
    assert preview.shape == images.shape and preview.dtype == torch.float32
    assert torch.equal(preview[2], images[2]) and not torch.equal(preview[0], images[0])
