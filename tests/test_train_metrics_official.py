"""Numerics against the official evaluation code, when checkouts of it are at hand (kept outside the project).

JOYGEN_OFFICIAL_SYNCNET: a checkout of github.com/joonson/syncnet_python (SyncNetModel.py, SyncNetInstance.py);
JOYGEN_OFFICIAL_PYTORCH_FID: a checkout of github.com/mseitzer/pytorch-fid. Each group is skipped without
its variable. The official modules are imported, not copied; the same random weights go into both.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from factory._metrics import write_fid_inception, write_syncnet
from train.metrics import fid as F
from train.metrics import syncnet as S

SYNCNET = Path(os.environ.get("JOYGEN_OFFICIAL_SYNCNET", "/nonexistent"))
PYTORCH_FID = Path(os.environ.get("JOYGEN_OFFICIAL_PYTORCH_FID", "/nonexistent"))
needs_syncnet = pytest.mark.skipif(not (SYNCNET / "SyncNetModel.py").is_file(),
                                   reason="set JOYGEN_OFFICIAL_SYNCNET to a syncnet_python checkout")
needs_fid = pytest.mark.skipif(not (PYTORCH_FID / "src" / "pytorch_fid" / "inception.py").is_file(),
                               reason="set JOYGEN_OFFICIAL_PYTORCH_FID to a pytorch-fid checkout")


def _load(name: str, path: Path, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    return mod


@needs_syncnet
def test_syncnet_towers_match_official(tmp_path, monkeypatch):
    official = _load("SyncNetModel", SYNCNET / "SyncNetModel.py", monkeypatch)
    path = write_syncnet(tmp_path / "syncnet_v2.model", np.random.default_rng(0))
    ref = official.S()
    own = ref.state_dict()
    for name, param in torch.load(path, weights_only=True).items():  # the official loadParameters loop
        own[name].copy_(param)
    ref.eval()
    ours = S.load_syncnet(path)
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(2, 3, 5, 224, 224, generator=g) * 255
    mfcc = torch.randn(2, 1, 13, 20, generator=g) * 10
    with torch.no_grad():
        v_ref, v = ref.forward_lip(clips), ours.embed_video(clips)
        a_ref, a = ref.forward_aud(mfcc), ours.embed_audio(mfcc)
    assert (v - v_ref).abs().max() <= 1e-4 * v_ref.abs().max()
    assert (a - a_ref).abs().max() <= 1e-4 * a_ref.abs().max()


@needs_syncnet
def test_sync_scores_match_official(monkeypatch):
    if importlib.util.find_spec("python_speech_features") is None:  # only its mfcc is imported at the top
        monkeypatch.setitem(sys.modules, "python_speech_features", types.ModuleType("python_speech_features"))
    _load("SyncNetModel", SYNCNET / "SyncNetModel.py", monkeypatch)
    inst = _load("SyncNetInstance", SYNCNET / "SyncNetInstance.py", monkeypatch)
    g = torch.Generator().manual_seed(1)
    for n, vshift in ((40, 15), (12, 15), (50, 10)):
        v, a = torch.randn(n, 1024, generator=g), torch.randn(n, 1024, generator=g)
        a[3:] = v[:-3] + 0.1 * a[3:]
        dists = inst.calc_pdist(v, a, vshift=vshift)
        mdist = torch.mean(torch.stack(dists, 1), 1)
        minval, minidx = torch.min(mdist, 0)
        ours = S.sync_scores(S.sync_distances(v, a, vshift), vshift)
        assert torch.allclose(S.sync_distances(v, a, vshift), torch.stack(dists), atol=1e-4)
        assert ours.offset == int(vshift - minidx)
        assert abs(ours.min_dist - float(minval)) < 1e-4
        assert abs(ours.confidence - float(torch.median(mdist) - minval)) < 1e-4


@needs_syncnet
def test_mfcc_matches_official_front_end():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(2)
    audio = (rng.standard_normal(32000) * 2000).astype(np.int16)
    ref = np.stack([np.array(i) for i in zip(*psf.mfcc(audio, 16000))])  # as SyncNetInstance.evaluate
    assert np.abs(S.speech_mfcc(torch.from_numpy(audio.astype(np.float64))).numpy() - ref).max() < 1e-9


@needs_fid
def test_fid_inception_and_distance_match_pytorch_fid(tmp_path, monkeypatch):
    path = write_fid_inception(tmp_path / F.WEIGHTS_NAME, np.random.default_rng(0))
    state = torch.load(path, weights_only=True)
    monkeypatch.syspath_prepend(str(PYTORCH_FID / "src"))
    for name in [m for m in sys.modules if m == "pytorch_fid" or m.startswith("pytorch_fid.")]:
        monkeypatch.delitem(sys.modules, name)
    import pytorch_fid.fid_score as fid_score
    import pytorch_fid.inception as inception

    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: state)  # no download
    ref = inception.InceptionV3([3]).eval()
    ours = F.load_fid_inception(path)
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 120, 100, 3), dtype=np.uint8))
    with torch.no_grad():
        expect = ref(frames.permute(0, 3, 1, 2).float() / 255)[0].flatten(1).double()
    got = F.inception_features(ours, frames)
    assert (got - expect).abs().max() <= 1e-5 * expect.abs().max()
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 24)), rng.standard_normal((30, 24)) * 1.5 + 0.2
    m1, s1, m2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    reference = fid_score.calculate_frechet_distance(m1, s1, m2, s2)
    assert abs(F.frechet_distance(m1, s1, m2, s2).value - reference) < 1e-9
    assert abs(F.frechet_distance_features(x, y).value - reference) < 1e-8
