"""BFM loading and building, geometry on hand-computed cases, the regressor checkpoint contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factory._damage import Exploit, expect_clear_error, random_bytes, truncate
from joygen_core.errors import ModelFileError
from joygen_core.morphable import geometry as G
from joygen_core.morphable.bfm import BFM, build_bfm_front, find_or_build_bfm, load_bfm, load_mp468
from joygen_core.morphable.regressor import ReconNet, load_regressor


@pytest.fixture(scope="module")
def bfm(models_dir):
    return load_bfm(models_dir / "BFM/BFM_model_front.mat", models_dir / "BFM/index_mp468_from_mesh35709.npy")


def tiny_bfm(verts) -> BFM:
    v = torch.tensor(verts, dtype=torch.float32)
    n = v.shape[0]
    return BFM(meanshape=v, id_base=torch.zeros(3 * n, 80), exp_base=torch.zeros(3 * n, 64),
               mean_tex=torch.zeros(n, 3), tex_base=torch.zeros(3 * n, 80), tri=torch.zeros(1, 3, dtype=torch.long),
               point_buf=torch.zeros(n, 8, dtype=torch.long), keypoints=torch.zeros(68, dtype=torch.long))


# ---------------------------------------------------------------- BFM file


def test_bfm_loads_official_layout(bfm, models_dir):
    from scipy.io import loadmat

    raw = loadmat(str(models_dir / "BFM/BFM_model_front.mat"))
    assert bfm.meanshape.shape == (35709, 3) and bfm.tri.shape == (70789, 3)
    assert bfm.id_base.shape == (3 * 35709, 80) and bfm.exp_base.shape == (3 * 35709, 64)
    assert bfm.point_buf.shape == (35709, 8) and bfm.keypoints.shape == (68,) and bfm.mp468.shape == (468,)
    # 1-based in the file, 0-based here
    assert torch.equal(bfm.tri, torch.from_numpy(raw["tri"].astype(np.int64) - 1))
    assert int(bfm.keypoints[0]) == int(raw["keypoints"][0, 0]) - 1
    # re-centred: per-axis mean 0, same shape up to a translation
    assert bfm.meanshape.mean(0).abs().max() < 1e-5
    diff = raw["meanshape"].reshape(-1, 3) - bfm.meanshape.numpy()
    assert np.allclose(diff, diff[0], atol=1e-6) and np.abs(diff[0]).max() > 1e-3


def test_bfm_missing_keys_and_bad_shapes(tmp_path, models_dir):
    from scipy.io import loadmat, savemat

    raw = {k: v for k, v in loadmat(str(models_dir / "BFM/BFM_model_front.mat")).items() if not k.startswith("__")}
    bad = dict(raw)
    del bad["exBase"], bad["keypoints"]
    savemat(str(tmp_path / "a.mat"), bad)
    with pytest.raises(ModelFileError, match=r"missing keys \['exBase', 'keypoints'\]"):
        load_bfm(tmp_path / "a.mat")
    bad = dict(raw, idBase=raw["idBase"][:, :40])
    savemat(str(tmp_path / "b.mat"), bad)
    with pytest.raises(ModelFileError, match=r"idBase: \(107127, 40\)"):
        load_bfm(tmp_path / "b.mat")
    (tmp_path / "c.mat").write_bytes(b"MATLAB 5.0 trunc")
    with pytest.raises(ModelFileError, match="c.mat"):
        load_bfm(tmp_path / "c.mat")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_bfm(tmp_path / "none.mat")


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "code"])
def test_damaged_bfm_files_are_one_clear_error(tmp_path, models_dir, damage):
    npy, mat = tmp_path / "index_mp468_from_mesh35709.npy", tmp_path / "BFM_model_front.mat"
    npy.write_bytes((models_dir / "BFM/index_mp468_from_mesh35709.npy").read_bytes())
    mat.write_bytes((models_dir / "BFM/BFM_model_front.mat").read_bytes())
    marker = tmp_path / "pwned"
    if damage == "code":  # an object array: numpy pickles it after the .npy header
        np.save(npy, np.array([Exploit(marker)], dtype=object), allow_pickle=True)
        expect_clear_error(lambda: load_mp468(npy), npy, damage, marker)
        return
    change = truncate if damage == "truncated" else random_bytes
    expect_clear_error(lambda: load_mp468(change(npy)), npy, damage)
    expect_clear_error(lambda: load_bfm(change(mat)), mat, damage)


def test_build_bfm_front_from_sources(tmp_path):
    """The BFM09 conversion on a miniature model: selection, scaling and component cuts as the official."""
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    n09, nexp, nfront, k_id, k_exp = 12, 10, 6, 83, 66
    shape_pc = rng.normal(size=(3 * n09, k_id)).astype(np.float32)
    shape_ev = rng.uniform(1, 2, (k_id, 1)).astype(np.float32)
    shape_mu = rng.normal(size=(3 * n09, 1)).astype(np.float32) * 1e5
    tex_pc = rng.normal(size=(3 * n09, k_id)).astype(np.float32)
    tex_ev = rng.uniform(1, 2, (k_id, 1)).astype(np.float32)
    tex_mu = rng.uniform(0, 255, (3 * n09, 1)).astype(np.float32)
    savemat(str(tmp_path / "01_MorphableModel.mat"), {"shapePC": shape_pc, "shapeEV": shape_ev, "shapeMU": shape_mu,
                                                      "texPC": tex_pc, "texEV": tex_ev, "texMU": tex_mu})
    exp_mu = rng.normal(size=3 * nexp).astype(np.float32)
    exp_pc = rng.normal(size=(k_exp, 3 * nexp)).astype(np.float32)
    (tmp_path / "Exp_Pca.bin").write_bytes(np.int32(k_exp).tobytes() + exp_mu.tobytes() + exp_pc.tobytes())
    exp_ev = rng.uniform(1, 2, k_exp)
    np.savetxt(tmp_path / "std_exp.txt", exp_ev)
    front = np.array([9, 0, 3, 4, 7, 2])  # into the expression model's vertices
    trim = rng.permutation(n09)[:nexp]  # expression model vertex -> BFM09 vertex
    savemat(str(tmp_path / "BFM_front_idx.mat"), {"idx": (front + 1).reshape(-1, 1).astype(np.float64)})
    savemat(str(tmp_path / "BFM_exp_idx.mat"), {"trimIndex": (trim + 1).reshape(-1, 1).astype(np.float64)})
    tri = np.array([[1, 2, 3], [2, 3, 4]], np.float64)
    savemat(str(tmp_path / "facemodel_info.mat"), {"tri": tri, "point_buf": np.ones((nfront, 8)),
                                                   "keypoints": np.arange(1, 69).reshape(1, 68) % nfront + 1})
    out = build_bfm_front(tmp_path)
    bfm = load_bfm(out)
    sel = trim[front]
    want_mean = (shape_mu.reshape(-1, 3) / 1e5)[sel]
    assert np.allclose(bfm.meanshape.numpy(), want_mean - want_mean.mean(0), atol=1e-5)
    want_id = (shape_pc * shape_ev.reshape(1, -1) / 1e5).reshape(n09, 3, k_id)[sel, :, :80].reshape(-1, 80)
    assert np.allclose(bfm.id_base.numpy(), want_id, rtol=1e-5, atol=1e-9)
    want_exp = (exp_pc.T * exp_ev.reshape(1, -1) / 1e5).reshape(nexp, 3, k_exp)[front, :, :64].reshape(-1, 64)
    assert np.allclose(bfm.exp_base.numpy(), want_exp, rtol=1e-5, atol=1e-9)
    assert bfm.tex_base.shape == (3 * nfront, 80) and torch.equal(bfm.tri, torch.tensor([[0, 1, 2], [1, 2, 3]]))
    # sources only: built once into another folder (the node uses the temp folder), then reused
    out.unlink()
    built = find_or_build_bfm(tmp_path, tmp_path / "cache" / "BFM_model_front.mat")
    assert built == tmp_path / "cache" / "BFM_model_front.mat" and not out.exists()
    stamp = built.stat().st_mtime_ns
    assert find_or_build_bfm(tmp_path, built) == built and built.stat().st_mtime_ns == stamp
    (tmp_path / "Exp_Pca.bin").write_bytes(np.int32(k_exp).tobytes() + exp_mu.tobytes())
    with pytest.raises(ModelFileError, match="truncated"):
        build_bfm_front(tmp_path)


# ---------------------------------------------------------------- geometry


def test_projection_of_known_vertex():
    b = tiny_bfm([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    coeffs = torch.zeros(1, 257)
    coeffs[0, 254:257] = torch.tensor([0.05, 0.0, 0.5])
    v = G.posed_camera_vertices(b, coeffs)
    assert torch.allclose(v[0, 0], torch.tensor([0.15, 0.2, 9.2]), atol=1e-6)
    assert torch.allclose(v[0, 1], torch.tensor([0.05, 0.0, 9.5]), atol=1e-6)
    px = G.project(v)
    assert torch.allclose(px[0, 0], torch.tensor([1015 * 0.15 / 9.2 + 112, 223 - (1015 * 0.2 / 9.2 + 112)]), atol=1e-4)
    # the camera axis lands on the principal point: column 112, row 223 - 112 = 111
    assert torch.allclose(G.project(torch.tensor([[[0.0, 0.0, 10.0]]])), torch.tensor([[[112.0, 111.0]]]))


def test_rotation_single_axes_and_order():
    q = math.pi / 2
    ex, ey, ez = torch.eye(3)
    r = G.rotation_matrix(torch.tensor([[q, 0, 0], [0, q, 0], [0, 0, q]]))
    assert torch.allclose(r[0] @ ey, ez, atol=1e-6)  # about x: y -> z
    assert torch.allclose(r[1] @ ez, ex, atol=1e-6)  # about y: z -> x
    assert torch.allclose(r[2] @ ex, ey, atol=1e-6)  # about z: x -> y
    # R = Rz @ Ry @ Rx: x is applied first; x=90 then y=90 sends y -> z -> x
    both = G.rotation_matrix(torch.tensor([[q, q, 0.0]]))[0]
    assert torch.allclose(both @ ey, ex, atol=1e-6)
    # a vertex posed with a yaw moves as row vector v @ R.T
    b = tiny_bfm([[0.0, 0.0, 1.0]])
    c = torch.zeros(1, 257)
    c[0, 225] = q
    assert torch.allclose(G.posed_camera_vertices(b, c)[0, 0], torch.tensor([1.0, 0.0, 10.0]), atol=1e-6)


def test_exp_override_and_shape(bfm):
    torch.manual_seed(0)
    coeffs = torch.randn(3, 257) * 0.3
    exp = torch.randn(3, 64)
    v1 = G.posed_camera_vertices(bfm, coeffs, exp=exp)
    c2 = coeffs.clone()
    c2[:, 80:144] = exp
    assert torch.allclose(v1, G.posed_camera_vertices(bfm, c2))
    s = G.face_shape(bfm, coeffs[:, :80], coeffs[:, 80:144])
    manual = bfm.meanshape.reshape(-1) + bfm.id_base @ coeffs[0, :80] + bfm.exp_base @ coeffs[0, 80:144]
    assert torch.allclose(s[0].reshape(-1), manual, atol=1e-5)


def test_crop_to_frame_official_rule():
    align = torch.tensor([[0.5, 200.0, 150.0]], dtype=torch.float64)  # s, tx, ty
    frame = (300, 400)
    # w = 200, h = 150; left = int(100 - 112 + (200 - 200) * .5) = -12; up = int(75 - 112 + (150 - 150) * .5) = -37
    p = torch.tensor([[[0.0, 0.0], [112.0, 111.0]]])
    out = G.crop_to_frame(p, align, frame)
    assert torch.allclose(out, torch.tensor([[[-24.0, -74.0], [200.0, 148.0]]]))


def test_face_box_from_lm68_rule():
    lm = torch.zeros(2, 68, 2)
    lm[:, :, 0] = torch.linspace(10.7, 90.2, 68)
    lm[:, :, 1] = 50.0
    lm[:, 8, 1] = 120.9  # chin: max y -> 120 after truncation
    lm[:, 29, 1] = 70.6  # nose bridge -> 70; y1 = 70 - (120 - 70) = 20
    lm[1, :, 0] -= 30  # starts left of the frame: falls back to the detector box
    det = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.5, 6.5, 80.9, 99.2]])
    box = G.face_box_from_lm68(lm, fallback=det)
    assert box.dtype == torch.int64
    assert box[0].tolist() == [10, 20, 90, 120]
    assert box[1].tolist() == [5, 6, 80, 99]


def test_landmarks468_handles_missing_vertices(bfm):
    b = BFM(**{**bfm.__dict__, "mp468": bfm.mp468.clone()})
    b.mp468[5] = -999
    v = G.posed_camera_vertices(b, torch.zeros(1, 257))
    pts = G.landmarks468(b, v)
    assert pts.shape == (1, 468, 2) and torch.isnan(pts[0, 5]).all() and torch.isfinite(pts[0, 6]).all()


def test_synthetic_face_projects_like_a_face(bfm):
    """Zero coefficients: the 68 keypoints of the factory face fall inside the crop, eyes above mouth."""
    lm = G.landmarks68(bfm, G.posed_camera_vertices(bfm, torch.zeros(1, 257)))[0]
    assert (lm > 0).all() and (lm < 224).all()
    assert lm[36:48, 1].mean() < lm[48:60, 1].mean()  # rows grow downwards


# ---------------------------------------------------------------- regressor


def test_regressor_loads_strictly_and_runs_batched(models_dir):
    path = models_dir / "face_recon_feat0.2_augment/epoch_20.pth"
    m = load_regressor(path)
    x = torch.rand(3, 3, 128, 128)  # any size works (global pool); 224 crops are exercised by reconstruct tests
    with torch.no_grad():
        y = m(x)
    assert y.shape == (3, 257) and torch.isfinite(y).all()
    # batch independence
    assert torch.allclose(m(x[1:2]), y[1:2], atol=1e-4)
    mb = load_regressor(path, dtype=torch.bfloat16)
    assert mb(x[:1, :, :64, :64].bfloat16()).dtype == torch.bfloat16  # small input: bf16 convs are slow on CPU


def test_regressor_bad_checkpoints(tmp_path, models_dir):
    good = torch.load(models_dir / "face_recon_feat0.2_augment/epoch_20.pth", weights_only=True)["net_recon"]
    bad = dict(good)
    bad["final_layers.1.weight"] = torch.zeros(63, 2048, 1, 1)
    torch.save({"net_recon": bad}, tmp_path / "shape.pth")
    with pytest.raises(ModelFileError, match=r"final_layers.1.weight: file \(63, 2048, 1, 1\)"):
        load_regressor(tmp_path / "shape.pth")
    bad = {k: v for k, v in good.items() if not k.startswith("final_layers.6")}
    bad["backbone.fc.weight"] = torch.zeros(1000, 2048)
    torch.save({"net_recon": bad}, tmp_path / "keys.pth")
    with pytest.raises(ModelFileError) as err:
        load_regressor(tmp_path / "keys.pth")
    assert "final_layers.6.bias" in str(err.value) and "backbone.fc.weight" in str(err.value)
    torch.save({"model": good}, tmp_path / "wrong.pth")
    with pytest.raises(ModelFileError, match="net_recon"):
        load_regressor(tmp_path / "wrong.pth")
    raw = (models_dir / "face_recon_feat0.2_augment/epoch_20.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ModelFileError, match="trunc.pth"):
        load_regressor(tmp_path / "trunc.pth")


def test_reconnet_key_layout():
    keys = ReconNet().state_dict().keys()
    assert "backbone.conv1.weight" in keys and "backbone.layer4.2.bn3.running_var" in keys
    assert not any(k.startswith("backbone.fc") for k in keys)
    assert [k for k in keys if k.startswith("final_layers")][-2:] == ["final_layers.6.weight", "final_layers.6.bias"]
