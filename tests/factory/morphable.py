"""BFM + Deep3DFaceRecon regressor files in the official formats, with a synthetic face and random weights.

- ``BFM/BFM_model_front.mat``: official keys, shapes (35709 vertices, 70789 triangles) and 1-based
  indices. The mesh is a grid bent into an oval face-like height field (eyes, nose bump, mouth), plus
  a few unused vertices and degenerate triangles to reach the official counts. The 68 keypoints sit
  where a face's landmarks would be. Bases are smooth random fields (the expression basis concentrated
  around the mouth). Written uncompressed (95 MB, like the official file): it loads 5x faster.
- ``BFM/index_mp468_from_mesh35709.npy``: 468 vertex ids; the outer-lip ring lies around the mouth.
- ``face_recon_feat0.2_augment/epoch_20.pth``: ``{'net_recon': state_dict, 'opt_00': ...}`` in fp32,
  heads scaled down so the random regressor predicts a near-frontal, centred face.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

N_VERTS, N_TRIS = 35709, 70789
GRID_R, GRID_C = 189, 188  # 35532 vertices, 70312 triangles; the rest are padding
MOUTH = (0.0, -0.38)
LIP_RING = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]


def face_points_68() -> np.ndarray:
    """A frontal 68-point layout (x right, y up, decimetres) in the iBUG order."""
    pts = []
    t = np.linspace(np.pi, 0, 17)
    pts += list(zip(0.72 * np.cos(t), 0.25 - 1.07 * np.sin(t)))  # jaw 0-16
    for side in (-1, 1):  # brows 17-21, 22-26
        xs = np.linspace(-0.55, -0.12, 5) if side < 0 else np.linspace(0.12, 0.55, 5)
        pts += [(x, 0.47 - 0.05 * abs(abs(x) - 0.33) / 0.21) for x in xs]
    pts += [(0.0, y) for y in (0.32, 0.2, 0.08, -0.04)]  # nose bridge 27-30
    pts += [(x, -0.14) for x in np.linspace(-0.13, 0.13, 5)]  # nose base 31-35
    for cx in (-0.31, 0.31):  # eyes 36-41, 42-47
        a = np.array([np.pi, 2 * np.pi / 3, np.pi / 3, 0, -np.pi / 3, -2 * np.pi / 3])
        pts += list(zip(cx + 0.12 * np.cos(a), 0.29 + 0.05 * np.sin(a)))
    a = np.pi - np.arange(12) * (2 * np.pi / 12)  # outer mouth 48-59, from the left corner over the top
    pts += list(zip(MOUTH[0] + 0.25 * np.cos(a), MOUTH[1] + 0.1 * np.sin(a)))
    a = np.pi - np.arange(8) * (2 * np.pi / 8)  # inner mouth 60-67
    pts += list(zip(MOUTH[0] + 0.17 * np.cos(a), MOUTH[1] + 0.04 * np.sin(a)))
    return np.asarray(pts, np.float64)


def face_mesh() -> tuple[np.ndarray, np.ndarray]:
    """(vertices [35709,3] float32 decimetres, triangles [70789,3] 0-based) of an oval face-like surface."""
    u = np.linspace(-1, 1, GRID_C)
    v = np.linspace(-1, 1, GRID_R)
    uu, vv = np.meshgrid(u, v)
    # square -> disc, then an oval 0.85 x 1.0 dm (centre slightly above the mouth)
    x = 0.85 * uu * np.sqrt(1 - vv**2 / 2)
    y = 1.0 * vv * np.sqrt(1 - uu**2 / 2) - 0.05
    r2 = (x / 0.9) ** 2 + ((y + 0.05) / 1.05) ** 2
    z = 0.42 * np.sqrt(np.clip(1 - r2, 0, None)) + 0.05
    z += 0.22 * np.exp(-((x / 0.11) ** 2 + ((y + 0.0) / 0.22) ** 2))  # nose
    z -= 0.06 * sum(np.exp(-(((x - cx) / 0.12) ** 2 + ((y - 0.29) / 0.07) ** 2)) for cx in (-0.31, 0.31))
    z += 0.03 * np.exp(-(((x - MOUTH[0]) / 0.25) ** 2 + ((y - MOUTH[1]) / 0.1) ** 2))  # lips
    grid = np.stack([x, y, z], -1).reshape(-1, 3)
    idx = np.arange(GRID_R * GRID_C).reshape(GRID_R, GRID_C)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    # counter-clockwise seen from +z (the camera looks down -z)
    tri = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    extra_v = N_VERTS - grid.shape[0]
    verts = np.concatenate([grid, np.repeat(grid[:1], extra_v, axis=0)])  # unused padding vertices
    extra_t = N_TRIS - tri.shape[0]
    pad = np.full((extra_t, 3), grid.shape[0], np.int64)  # degenerate triangles on an unused vertex
    return verts.astype(np.float32), np.concatenate([tri, pad])


def nearest_vertices(verts: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Index of the vertex nearest in (x, y) to each point (front-most surface is a height field)."""
    d = ((verts[None, : GRID_R * GRID_C, :2] - pts[:, None, :]) ** 2).sum(-1)
    return d.argmin(1)


def point_buffer(tri: np.ndarray, n: int) -> np.ndarray:
    """[n,8] 0-based triangles around each vertex, padded with F (the official 'no triangle')."""
    f = tri.shape[0]
    keep = tri[:, 0] != tri[:, 1]  # skip degenerate padding triangles
    vid = tri[keep].reshape(-1)
    tid = np.repeat(np.nonzero(keep)[0], 3)
    order = np.argsort(vid, kind="stable")
    vid, tid = vid[order], tid[order]
    first = np.searchsorted(vid, vid)
    rank = np.arange(vid.size) - first
    buf = np.full((n, 8), f, np.int64)
    ok = rank < 8
    buf[vid[ok], rank[ok]] = tid[ok]
    return buf


def smooth_basis(verts: np.ndarray, k: int, used: int, amp: float, rng: np.random.Generator,
                 centre: tuple[float, float] | None = None) -> np.ndarray:
    """[3N,k] basis: ``used`` smooth random fields (optionally concentrated around ``centre``), zeros after."""
    n = verts.shape[0]
    freq = rng.uniform(1.0, 6.0, (used, 3, 2))
    phase = rng.uniform(0, 2 * np.pi, (used, 3))
    xy = verts[:, :2].astype(np.float64)
    field = np.sin(np.einsum("nd,kcd->nkc", xy, freq) + phase)  # [N,used,3]
    if centre is not None:
        w = np.exp(-(((xy[:, 0] - centre[0]) / 0.35) ** 2 + ((xy[:, 1] - centre[1]) / 0.25) ** 2))
        field *= w[:, None, None]
    basis = np.zeros((n, 3, k), np.float32)
    basis[:, :, :used] = (amp * field).transpose(0, 2, 1)
    return basis.reshape(3 * n, k)


def write_bfm(bfm_dir: Path, rng: np.random.Generator) -> None:
    from scipy.io import savemat

    verts, tri = face_mesh()
    keypoints = nearest_vertices(verts, face_points_68())
    shifted = verts + np.array([0.02, -0.03, 0.01], np.float32)  # un-centred, as stored officially
    tex = np.clip(180 + 30 * np.sin(verts[:, :1] * 7 + np.arange(3)), 0, 255).astype(np.float32)
    bfm_dir.mkdir(parents=True, exist_ok=True)
    mat = {
        "meanshape": shifted.reshape(1, -1),
        "meantex": tex.reshape(1, -1),
        "idBase": smooth_basis(verts, 80, 80, 0.01, rng),
        "exBase": smooth_basis(verts, 64, 64, 0.01, rng, centre=MOUTH),
        "texBase": smooth_basis(verts, 80, 80, 5.0, rng),
        "tri": (tri + 1).astype(np.float32),
        "point_buf": (point_buffer(tri, N_VERTS) + 1).astype(np.float32),
        "keypoints": (keypoints + 1).astype(np.float32).reshape(1, 68),
        "tri_mask2": (tri[: N_TRIS - 1000] + 1).astype(np.float32),
        "frontmask2_idx": (np.arange(N_VERTS - 100) + 1).astype(np.float32).reshape(-1, 1),
        "skinmask": np.ones((1, N_VERTS), np.float32),
    }
    savemat(str(bfm_dir / "BFM_model_front.mat"), mat)  # uncompressed: 5x faster to load

    # 468 MediaPipe-topology ids: the outer-lip ring around the mouth, the rest spread over the face
    a = np.pi - np.arange(20) * (2 * np.pi / 20)
    ring = np.stack([MOUTH[0] + 0.27 * np.cos(a), MOUTH[1] + 0.12 * np.sin(a)], -1)
    mp = rng.integers(0, GRID_R * GRID_C, 468)
    mp[LIP_RING] = nearest_vertices(verts, ring)
    np.save(bfm_dir / "index_mp468_from_mesh35709.npy", mp.astype(np.int64))


def regressor_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ResNet-50 + heads state dict in the official key layout, heads scaled to small outputs."""
    from joygen_core.morphable.regressor import ReconNet

    with torch.device("meta"):  # shapes only: filling 25M weights directly is much faster than init
        shapes = {k: v.shape for k, v in ReconNet().state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros((), dtype=torch.int64)
        elif k.endswith("running_var") or (k.endswith(".weight") and len(shape) == 1):
            state[k] = torch.ones(shape)
        elif k.endswith(("running_mean", ".bias")):
            state[k] = torch.zeros(shape)
        else:  # conv weights: He init over fan-out, heads scaled down to small coefficients
            fan_out = shape[0] * shape[2] * shape[3]
            std = 1e-3 * (2.0 / 2048) ** 0.5 if k.startswith("final_layers") else (2.0 / fan_out) ** 0.5
            state[k] = torch.randn(shape, generator=g) * std
    return state


def write_regressor(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opt = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
    torch.save({"net_recon": regressor_state(seed), "opt_00": opt}, path)


def write(root: Path, rng: np.random.Generator) -> None:
    root = Path(root)
    write_bfm(root / "BFM", rng)
    write_regressor(root / "face_recon_feat0.2_augment" / "epoch_20.pth")
