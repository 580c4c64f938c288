"""The Basel Face Model (front part + expression basis) as Deep3DFaceRecon uses it.

Official (Deep3DFaceRecon ``models/bfm.py``): ``BFM_model_front.mat`` holds 1-based indices and an
un-centred mean shape; the loader converts indices to 0-based and subtracts the per-axis mean of the
mean shape. ``util/load_mats.py`` builds that file from the BFM09 sources when only they are present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError
from ..weights import raise_load_error

log = logging.getLogger(__name__)

N_VERTS = 35709
N_TRIS = 70789
N_ID, N_EXP, N_TEX = 80, 64, 80
REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf", "keypoints")


@dataclass
class BFM:
    """BFM front model as tensors (0-based indices, re-centred mean shape).

    - ``meanshape`` [N,3], ``id_base`` [3N,80], ``exp_base`` [3N,64] (rows interleaved x,y,z per vertex).
    - ``mean_tex`` [N,3] (0..255), ``tex_base`` [3N,80].
    - ``tri`` [F,3] long; ``point_buf`` [N,8] long (the triangles around each vertex; index F = none).
    - ``keypoints`` [68] long: vertex ids of the 68 landmarks.
    - ``mp468`` [468] long or None: vertex ids of the MediaPipe-topology points (negative = no vertex).
    """

    meanshape: torch.Tensor
    id_base: torch.Tensor
    exp_base: torch.Tensor
    mean_tex: torch.Tensor
    tex_base: torch.Tensor
    tri: torch.Tensor
    point_buf: torch.Tensor
    keypoints: torch.Tensor
    mp468: torch.Tensor | None = None

    @property
    def num_vertices(self) -> int:
        return int(self.meanshape.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BFM:
        """A copy on ``device``; float fields cast to ``dtype`` when given (indices stay long)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                kw[f.name] = None
            elif v.is_floating_point():
                kw[f.name] = v.to(device=device, dtype=dtype or v.dtype)
            else:
                kw[f.name] = v.to(device=device)
        return BFM(**kw)


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises several types for truncated / foreign files
        raise_load_error(path, exc)


def load_bfm(bfm_mat_path: Path | str, mp468_path: Path | str | None = None) -> BFM:
    """Load ``BFM_model_front.mat`` (and optionally ``index_mp468_from_mesh35709.npy``) as a :class:`BFM`."""
    path = Path(bfm_mat_path)
    if not path.is_file():
        raise ModelFileError(f"BFM file {path} does not exist (expected BFM/BFM_model_front.mat in the model folder).")
    m = _loadmat(path)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise ModelFileError(f"{path} is not a BFM_model_front.mat: missing keys {missing} "
                             f"(expected {list(REQUIRED_KEYS)}).")
    mean = np.asarray(m["meanshape"], np.float32).reshape(-1)
    if mean.size % 3:
        raise ModelFileError(f"{path}: meanshape has {mean.size} values, not a multiple of 3.")
    n = mean.size // 3
    expect = {"idBase": (3 * n, N_ID), "exBase": (3 * n, N_EXP), "texBase": (3 * n, N_TEX),
              "point_buf": (n, 8)}
    bad = [f"{k}: {tuple(m[k].shape)} != {v}" for k, v in expect.items() if tuple(m[k].shape) != v]
    if m["meantex"].size != 3 * n:
        bad.append(f"meantex: {m['meantex'].size} values != {3 * n}")
    if m["tri"].ndim != 2 or m["tri"].shape[1] != 3:
        bad.append(f"tri: {tuple(m['tri'].shape)} is not [F,3]")
    if m["keypoints"].size != 68:
        bad.append(f"keypoints: {m['keypoints'].size} values != 68")
    if bad:
        raise ModelFileError(f"{path} has wrong shapes for {n} vertices: " + "; ".join(bad) + ".")
    if n != N_VERTS:
        log.warning("%s has %d vertices (the official front model has %d)", path, n, N_VERTS)

    mean = mean.reshape(n, 3)
    mean = mean - mean.mean(axis=0, keepdims=True)  # official: recenter=True

    def idx(key: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(m[key]).astype(np.int64) - 1)  # official: 1-based -> 0-based

    tri = idx("tri")
    keypoints = idx("keypoints").reshape(-1)
    if tri.min() < 0 or tri.max() >= n or keypoints.min() < 0 or keypoints.max() >= n:
        raise ModelFileError(f"{path}: triangle or keypoint indices fall outside 1..{n}.")
    mp468 = load_mp468(mp468_path, n) if mp468_path is not None else None
    return BFM(
        meanshape=torch.from_numpy(np.ascontiguousarray(mean)),
        id_base=torch.from_numpy(np.asarray(m["idBase"], np.float32)),
        exp_base=torch.from_numpy(np.asarray(m["exBase"], np.float32)),
        mean_tex=torch.from_numpy(np.asarray(m["meantex"], np.float32).reshape(n, 3)),
        tex_base=torch.from_numpy(np.asarray(m["texBase"], np.float32)),
        tri=tri,
        point_buf=idx("point_buf"),
        keypoints=keypoints,
        mp468=mp468,
    )


def load_mp468(path: Path | str, num_vertices: int = N_VERTS) -> torch.Tensor:
    """The 468 MediaPipe-topology points as BFM vertex ids [468] long (some versions hold -999 = none)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"MediaPipe index file {path} does not exist (expected "
                             "BFM/index_mp468_from_mesh35709.npy in the model folder).")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy's own words advise allow_pickle=True: the shared classifier says what is wrong
        raise_load_error(path, exc)
    a = np.asarray(a).reshape(-1)
    if a.shape != (468,) or (not np.issubdtype(a.dtype, np.integer) and not np.all(a == np.round(a))):
        raise ModelFileError(f"{path} should hold 468 integer vertex ids; got {a.dtype} {a.shape}.")
    a = a.astype(np.int64)
    if a.max() >= num_vertices:
        raise ModelFileError(f"{path}: vertex id {a.max()} is outside the {num_vertices}-vertex mesh.")
    return torch.from_numpy(a)


def _load_exp_basis(bfm_dir: Path, n_vertex: int = 53215) -> tuple[np.ndarray, np.ndarray]:
    """``Exp_Pca.bin`` (int32 count, 3n float32 mean, count*3n float32 components) + ``std_exp.txt``.

    ``n_vertex``: vertices of the expression model (53215 officially, the length of ``trimIndex``).
    """
    path = bfm_dir / "Exp_Pca.bin"
    raw = path.read_bytes()
    count = int(np.frombuffer(raw[:4], np.int32)[0])
    need = 4 + 4 * 3 * n_vertex * (1 + count)
    if len(raw) < need:
        raise ModelFileError(f"{path} is truncated ({len(raw)} bytes, expected {need}).")
    comps = np.frombuffer(raw, np.float32, count=count * 3 * n_vertex, offset=4 + 4 * 3 * n_vertex)
    exp_pc = comps.reshape(count, -1).T  # [3*53215, count]
    exp_ev = np.loadtxt(bfm_dir / "std_exp.txt")
    return exp_pc, exp_ev


def build_bfm_front(bfm_dir: Path | str, out_path: Path | str | None = None) -> Path:
    """Write ``BFM_model_front.mat`` from the BFM09 sources, as the official ``transferBFM09`` does.

    Needs ``01_MorphableModel.mat``, ``Exp_Pca.bin``, ``std_exp.txt``, ``BFM_front_idx.mat``,
    ``BFM_exp_idx.mat`` and ``facemodel_info.mat`` in ``bfm_dir``. Bases are scaled to decimetres
    (/1e5) and cut to 80 id / 64 exp / 80 tex components; vertices are reduced to the front part.
    Written to ``out_path`` (default ``bfm_dir/BFM_model_front.mat``, where the official puts it).
    """
    from scipy.io import savemat

    bfm_dir = Path(bfm_dir)
    target = Path(out_path) if out_path is not None else bfm_dir / "BFM_model_front.mat"
    needed = ["01_MorphableModel.mat", "Exp_Pca.bin", "std_exp.txt", "BFM_front_idx.mat", "BFM_exp_idx.mat",
              "facemodel_info.mat"]
    absent = [n for n in needed if not (bfm_dir / n).is_file()]
    if absent:
        raise ModelFileError(f"Cannot build BFM_model_front.mat from {bfm_dir}: missing {absent}. Put the official "
                             "BFM_model_front.mat there, or the BFM09 sources (Deep3DFaceRecon_pytorch README).")
    log.info("Building %s from the BFM09 sources in %s", target, bfm_dir)
    src = _loadmat(bfm_dir / "01_MorphableModel.mat")
    # official naming: BFM_front_idx 'idx' indexes the 53215-vertex expression model,
    # BFM_exp_idx 'trimIndex' maps those to the 53490-vertex BFM09 model.
    index_exp = _loadmat(bfm_dir / "BFM_front_idx.mat")["idx"].astype(np.int64).reshape(-1) - 1
    trim = _loadmat(bfm_dir / "BFM_exp_idx.mat")["trimIndex"].astype(np.int64).reshape(-1) - 1
    index_shape = trim[index_exp]
    exp_pc, exp_ev = _load_exp_basis(bfm_dir, n_vertex=trim.size)
    id_base = (src["shapePC"] * np.reshape(src["shapeEV"], [-1, src["shapePC"].shape[1]]))[:, :N_ID] / 1e5
    ex_base = (exp_pc * np.reshape(exp_ev, [-1, exp_pc.shape[1]]))[:, :N_EXP] / 1e5
    tex_base = (src["texPC"] * np.reshape(src["texEV"], [-1, src["texPC"].shape[1]]))[:, :N_TEX]

    def pick(a: np.ndarray, index: np.ndarray) -> np.ndarray:
        return a.reshape(-1, 3, a.shape[-1])[index].reshape(-1, a.shape[-1])

    info = _loadmat(bfm_dir / "facemodel_info.mat")
    out = {
        "meanshape": (np.reshape(src["shapeMU"], [-1, 3]) / 1e5)[index_shape].reshape(1, -1),
        "meantex": np.reshape(src["texMU"], [-1, 3])[index_shape].reshape(1, -1),
        "idBase": pick(id_base, index_shape), "exBase": pick(ex_base, index_exp),
        "texBase": pick(tex_base, index_shape),
    }
    for key in ("tri", "point_buf", "tri_mask2", "keypoints", "frontmask2_idx", "skinmask"):
        if key in info:
            out[key] = info[key]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp.mat")
    savemat(str(tmp), out)
    tmp.replace(target)
    return target


def find_or_build_bfm(bfm_dir: Path | str, build_to: Path | str | None = None) -> Path:
    """``bfm_dir/BFM_model_front.mat``; when only the BFM09 sources are there, the file built from them
    (at ``build_to``, default beside the sources; an existing built file is reused)."""
    bfm_dir = Path(bfm_dir)
    target = bfm_dir / "BFM_model_front.mat"
    if target.is_file():
        return target
    built = Path(build_to) if build_to is not None else target
    return built if built.is_file() else build_bfm_front(bfm_dir, built)
