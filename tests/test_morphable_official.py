"""Numerics against the official Deep3DFaceRecon_pytorch code, when a checkout of it is at hand.

Set JOYGEN_OFFICIAL_D3D to a checkout of github.com/sicxu/Deep3DFaceRecon_pytorch (it is imported, not
copied); the test is skipped otherwise. Compares the POS fit, the face model (shape, pose, camera,
projection, keypoints) and the regressor network on the same random weights and inputs.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from joygen_core.face.align import LM3D_STD, align_params
from joygen_core.morphable import geometry as G
from joygen_core.morphable.bfm import load_bfm
from joygen_core.morphable.regressor import ReconNet

OFFICIAL = Path(os.environ.get("JOYGEN_OFFICIAL_D3D", "/nonexistent"))
pytestmark = pytest.mark.skipif(not (OFFICIAL / "models" / "bfm.py").is_file(),
                                reason="set JOYGEN_OFFICIAL_D3D to a Deep3DFaceRecon_pytorch checkout")


@pytest.fixture(scope="module")
def official(monkeypatch_module):
    """The official modules, with stand-ins for imports the compared functions never use (kornia, arcface)."""
    if not hasattr(np, "VisibleDeprecationWarning"):
        monkeypatch_module.setattr(np, "VisibleDeprecationWarning", np.exceptions.VisibleDeprecationWarning,
                                   raising=False)
    stubs = {"kornia": types.ModuleType("kornia"), "kornia.geometry": types.ModuleType("kornia.geometry"),
             "models": types.ModuleType("models"), "models.arcface_torch": types.ModuleType("models.arcface_torch"),
             "models.arcface_torch.backbones": types.ModuleType("models.arcface_torch.backbones")}
    for name, mod in stubs.items():  # a spec, so find_spec() on them (diffusers does it) answers
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    stubs["kornia.geometry"].warp_affine = None
    stubs["models"].__path__ = [str(OFFICIAL / "models")]
    stubs["models.arcface_torch.backbones"].get_model = None
    for name, mod in stubs.items():
        monkeypatch_module.setitem(sys.modules, name, mod)
    monkeypatch_module.syspath_prepend(str(OFFICIAL))

    def load(name: str, rel: str):
        spec = importlib.util.spec_from_file_location(name, OFFICIAL / rel)
        mod = importlib.util.module_from_spec(spec)
        monkeypatch_module.setitem(sys.modules, name, mod)
        spec.loader.exec_module(mod)
        return mod

    return types.SimpleNamespace(networks=load("models.networks", "models/networks.py"),
                                 bfm=load("models.bfm", "models/bfm.py"),
                                 preprocess=load("util.preprocess", "util/preprocess.py"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_pos_fit_matches_official(official):
    rng = np.random.default_rng(0)
    h = 480
    for _ in range(10):
        five = rng.uniform(50, 400, (5, 2))
        lm = five.copy()
        lm[:, 1] = h - 1 - lm[:, 1]
        t, s = official.preprocess.POS(lm.T, LM3D_STD.numpy().T)
        ours = align_params(torch.tensor(five)[None], (h, 640))[0]
        assert abs(102.0 / s - float(ours[0])) < 1e-9
        assert np.allclose(np.ravel(t), ours[1:].numpy(), atol=1e-8)


def test_face_model_matches_official(official, models_dir):
    fm = official.bfm.ParametricFaceModel(bfm_folder=str(models_dir / "BFM"), is_train=False)
    fm.to("cpu")
    bfm = load_bfm(models_dir / "BFM/BFM_model_front.mat")
    torch.manual_seed(0)
    coeffs = torch.randn(8, 257) * 0.5
    coeffs[:, 224:227] = (torch.rand(8, 3) - 0.5) * 1.2
    coeffs[:, 254:257] = (torch.rand(8, 3) - 0.5) * 0.6
    vertex, _, _, lm = fm.compute_for_render(coeffs.clone())
    ours = G.posed_camera_vertices(bfm, coeffs)
    assert (ours - vertex).abs().max() < 1e-5
    lm_rows = torch.stack([lm[..., 0], 223 - lm[..., 1]], -1)
    assert (G.landmarks68(bfm, ours) - lm_rows).abs().max() < 1e-3


def test_regressor_matches_official(official, models_dir):
    state = torch.load(models_dir / "face_recon_feat0.2_augment/epoch_20.pth", weights_only=True)["net_recon"]
    g = torch.Generator().manual_seed(0)
    for i in range(7):  # full-size heads, so the comparison sees large outputs
        state[f"final_layers.{i}.weight"] = torch.randn(state[f"final_layers.{i}.weight"].shape, generator=g) * 0.05
    net = official.networks.define_net_recon("resnet50", use_last_fc=False)
    net.load_state_dict(state)
    ours = ReconNet()
    ours.load_state_dict(state)
    x = torch.rand(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ours.eval()(x), atol=1e-4)
