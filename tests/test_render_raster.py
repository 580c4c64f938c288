"""The torch rasterizer: analytic depth, visibility, watertight coverage, the tie rule, clipping, bad input.

A dense reference (every triangle against every pixel centre, written straight from the cudaraster
rules) checks the grouped, compacted implementation on random meshes.
"""

from __future__ import annotations

import math

import pytest
import torch

from joygen_core.render.raster import (
    CENTER,
    FOCAL,
    clip_from_camera,
    nvdiffrast_available,
    rasterize_clip_torch,
    rasterize_depth,
    resolve_backend,
)

K = FOCAL / CENTER  # clip-space scale (9.0625)


def pix_to_cam(u: float, r: float, zc: float, size: int = 224) -> list[float]:
    """Camera-space point whose projection is at pixel coordinates (u right, r down, in pixels)."""
    xn = 2 * u / size - 1
    yn = 2 * r / size - 1
    return [xn * zc / K, -yn * zc / K, zc]


def mesh_from_pixels(points, zc, size=224):
    """v_cam [1,N,3] for screen points (u, r) at depths zc (scalar or per point)."""
    zs = [zc] * len(points) if not isinstance(zc, (list, tuple)) else zc
    return torch.tensor([[pix_to_cam(u, r, z, size) for (u, r), z in zip(points, zs)]], dtype=torch.float32)


# ----------------------------------------------------------------------------- dense reference


def dense_reference(pos: torch.Tensor, tri: torch.Tensor, size: int, frustum: bool = True):
    """Every triangle x every pixel, float64 where it does not matter, cudaraster's integer rules where it does.

    ``frustum=False``: triangles reaching outside the frame are snapped whole instead of skipped (no clipping).
    """
    B = pos.shape[0]
    depth = torch.full((B, size, size), math.inf, dtype=torch.float64)
    c = (torch.arange(size) * 16 + 8).long()
    syy, sxx = torch.meshgrid(c, c, indexing="ij")
    for b in range(B):
        for f in range(tri.shape[0]):
            v = pos[b, tri[f]]  # [3,4] float32
            x, y, zz, w = v.unbind(-1)
            if frustum and not (w >= torch.maximum(torch.maximum(x.abs(), y.abs()), zz.abs())).all():
                continue  # the reference only handles triangles inside the frustum
            scale = float(size * 8)
            rcp = 1.0 / w
            X = torch.round((x * rcp) * scale).long() + size * 8
            Y = torch.round((y * rcp) * scale).long() + size * 8
            area = (X[1] - X[0]) * (Y[2] - Y[0]) - (Y[1] - Y[0]) * (X[2] - X[0])
            if area == 0:
                continue
            sg = 1 if area > 0 else -1
            inside = torch.ones(size, size, dtype=torch.bool)
            for k in range(3):
                a, e = k, (k + 1) % 3
                dx, dy = sg * (X[e] - X[a]), sg * (Y[e] - Y[a])
                E = sg * ((X[a] - sxx) * (Y[e] - Y[a]) - (Y[a] - syy) * (X[e] - X[a]))
                excl = 1 if (dy > 0 or (dy == 0 and dx <= 0)) else 0
                inside &= (E - excl) >= 0
            if not inside.any():
                continue
            jj, ii = inside.nonzero(as_tuple=True)
            fx = (ii.double() + 0.5) * 2 / size - 1
            fy = (jj.double() + 0.5) * 2 / size - 1
            vd = v.double()
            qx = vd[:, 0][None] - fx[:, None] * vd[:, 3][None]
            qy = vd[:, 1][None] - fy[:, None] * vd[:, 3][None]
            a0 = qx[:, 1] * qy[:, 2] - qy[:, 1] * qx[:, 2]
            a1 = qx[:, 2] * qy[:, 0] - qy[:, 2] * qx[:, 0]
            a2 = qx[:, 0] * qy[:, 1] - qy[:, 0] * qx[:, 1]
            b0 = (a0 / (a0 + a1 + a2)).clamp(0, 1)  # nvdiffrast saturates barycentrics into the triangle
            b1 = (a1 / (a0 + a1 + a2)).clamp(0, 1)
            bs = 1 / (b0 + b1).clamp(min=1)
            b0, b1 = b0 * bs, b1 * bs
            d = b0 * vd[0, 3] + b1 * vd[1, 3] + (1 - b0 - b1) * vd[2, 3]
            depth[b, jj, ii] = torch.minimum(depth[b, jj, ii], d)
    cov = torch.isfinite(depth)
    return torch.where(cov, depth, torch.zeros_like(depth)), cov


def random_mesh(n_tri: int, size: int, gen: torch.Generator, spread: float = 1.0, max_edge: float = 6.0):
    """Random small and large triangles on screen at depths 8..12, corners on a 1/64 px grid (many exact ties)."""
    pts, zs, tris = [], [], []
    for i in range(n_tri):
        cx, cy = (torch.rand(2, generator=gen) * size * spread).tolist()
        e = max_edge if i % 4 else max_edge * 4
        for _ in range(3):
            du, dr = ((torch.rand(2, generator=gen) - 0.5) * e).tolist()
            u = min(max(cx + du, 0.25), size * spread - 0.25)
            r = min(max(cy + dr, 0.25), size * spread - 0.25)
            pts.append((round(u * 64) / 64, round(r * 64) / 64))
            zs.append(8.0 + 4.0 * float(torch.rand(1, generator=gen)))
        tris.append([3 * i, 3 * i + 1, 3 * i + 2])
    return mesh_from_pixels(pts, zs, size), torch.tensor(tris)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_dense_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    size = 24
    v, tri = random_mesh(60, size, gen)
    pos = clip_from_camera(v)
    d, cov = rasterize_clip_torch(pos, tri, size)
    rd, rcov = dense_reference(pos, tri, size)
    assert torch.equal(cov, rcov)
    assert torch.allclose(d.double(), rd, rtol=1e-5, atol=0)


def test_shared_grid_watertight_with_ties():
    """A mesh of a square grid whose corners sit exactly on pixel centres: every sample on a shared
    edge or corner goes to exactly one triangle (no holes, no double cover)."""
    size = 32
    n = 6  # grid cells, corner spacing 4 px, corners at pixel centres
    pts = [(4 + 4 * i + 0.5, 4 + 4 * j + 0.5) for j in range(n + 1) for i in range(n + 1)]
    tris = []
    for j in range(n):
        for i in range(n):
            a, b, c, d = j * (n + 1) + i, j * (n + 1) + i + 1, (j + 1) * (n + 1) + i, (j + 1) * (n + 1) + i + 1
            tris += [[a, b, d], [a, d, c]] if (i + j) % 2 else [[a, b, c], [b, d, c]]
    v = mesh_from_pixels(pts, 10.0, size)
    tri = torch.tensor(tris)
    count = torch.zeros(size, size, dtype=torch.long)
    for f in range(tri.shape[0]):  # render each triangle alone and count how often each pixel is drawn
        _, c = rasterize_depth(v, tri[f:f + 1], size=size, backend="torch")
        count += c[0].long()
    # interior samples x, y in 4..28 -> pixels 4..27; top-left rule keeps the left and top borders
    expect = torch.zeros(size, size, dtype=torch.long)
    expect[4:28, 4:28] = 1
    assert torch.equal(count, expect)
    _, c_all = rasterize_depth(v, tri, size=size, backend="torch")
    assert torch.equal(c_all[0], expect.bool())


def test_closed_mesh_each_interior_pixel_once():
    """A closed octahedron: front and back faces over every interior pixel, each surface exactly once."""
    size = 64
    r, zc = 1.0, 10.0
    verts = torch.tensor([[r, 0, zc], [-r, 0, zc], [0, r, zc], [0, -r, zc], [0, 0, zc - r], [0, 0, zc + r]])
    tri = torch.tensor([[4, 0, 2], [4, 2, 1], [4, 1, 3], [4, 3, 0], [5, 2, 0], [5, 1, 2], [5, 3, 1], [5, 0, 3]])
    v = verts[None].float()
    front = torch.zeros(size, size, dtype=torch.long)
    back = torch.zeros(size, size, dtype=torch.long)
    for f in range(8):
        _, c = rasterize_depth(v, tri[f:f + 1], size=size, backend="torch")
        (front if f < 4 else back).add_(c[0].long())
    assert front.max() == 1 and back.max() == 1
    assert torch.equal(front, back)  # same silhouette, same edges
    assert front.sum() > 200
    d, c = rasterize_depth(v, tri, size=size, backend="torch")
    assert torch.equal(c[0], front.bool())
    assert (d[0][c[0]] <= zc + 1e-4).all()  # the near half wins everywhere


def test_plane_at_known_distance():
    """A fronto-parallel quad at Zc = 7.25: every covered pixel reads exactly that depth."""
    size = 224
    zc = 7.25
    pts = [(20.3, 30.7), (200.1, 25.2), (210.6, 190.4), (15.2, 200.9)]
    v = mesh_from_pixels(pts, zc, size)
    d, c = rasterize_depth(v, torch.tensor([[0, 1, 2], [0, 2, 3]]), size=size, backend="torch")
    assert c.sum() > 0.8 * 180 * 170
    assert torch.allclose(d[c], torch.full_like(d[c], zc), atol=1e-5, rtol=0)
    assert (d[~c] == 0).all()
    # a tilted plane: depth is perspective-correct (1/Zc linear on screen)
    pts3 = [(10.0, 10.0), (200.0, 10.0), (10.0, 200.0)]
    v3 = mesh_from_pixels(pts3, [8.0, 12.0, 8.0], size)
    d3, c3 = rasterize_depth(v3, torch.tensor([[0, 1, 2]]), size=size, backend="torch")
    j, i = 50, 100  # pixel centre (100.5, 50.5): screen barycentric along u
    t = (100.5 - 10.0) / 190.0
    expect = 1.0 / ((1 - t) / 8.0 + t / 12.0)
    assert c3[0, j, i] and abs(float(d3[0, j, i]) - expect) < 1e-4


def test_nearer_triangle_wins_in_any_order():
    size = 64
    a = [(5.0, 5.0), (60.0, 8.0), (10.0, 58.0)]
    v = mesh_from_pixels(a + a, [9.0] * 3 + [11.0] * 3, size)
    for tri in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]], [[3, 5, 4], [0, 2, 1]]):
        d, c = rasterize_depth(v, torch.tensor(tri), size=size, backend="torch")
        assert c.sum() > 500
        assert torch.allclose(d[c], torch.full_like(d[c], 9.0), atol=1e-5)


def test_tie_rule_edge_on_cases():
    """Hand-built edges through pixel centres: top and left edges draw their samples, bottom and right do not."""
    size = 16
    # axis-aligned right triangle, corners on pixel centres (2.5,2.5), (10.5,2.5), (2.5,10.5)
    v = mesh_from_pixels([(2.5, 2.5), (10.5, 2.5), (2.5, 10.5)], 10.0, size)
    for tri in ([[0, 1, 2]], [[0, 2, 1]]):  # either winding
        _, c = rasterize_depth(v, torch.tensor(tri), size=size, backend="torch")
        c = c[0]
        assert c[2, 2:10].all() and not c[2, 10]  # top edge drawn; the corner on the hypotenuse is not
        assert c[2:10, 2].all() and not c[10, 2]  # left edge drawn
        assert not c[1].any() and not c[:, 1].any()
        # hypotenuse x + y = 13 in pixel-centre units (through centres (i, j) with i + j = 10): not drawn
        for i in range(2, 11):
            assert not c[10 - i + 2, i] if 0 <= 12 - i < size else True
    # the mirrored triangle: right and bottom edges; its axis-aligned edges are right/bottom -> excluded
    v2 = mesh_from_pixels([(10.5, 10.5), (2.5, 10.5), (10.5, 2.5)], 10.0, size)
    _, c2 = rasterize_depth(v2, torch.tensor([[0, 1, 2]]), size=size, backend="torch")
    c2 = c2[0]
    assert not c2[10, :].any() and not c2[:, 10].any()
    # but its hypotenuse is a top-left edge: centres with i + j = 12 (i, j in 3..9) are drawn
    assert all(bool(c2[12 - i, i]) for i in range(3, 10))
    # a horizontal edge between two triangles sharing it: the row of centres goes to the lower one only
    v3 = mesh_from_pixels([(1.0, 6.5), (15.0, 6.5), (8.0, 1.0), (8.0, 12.0)], 10.0, size)
    _, top = rasterize_depth(v3, torch.tensor([[0, 1, 2]]), size=size, backend="torch")
    _, bottom = rasterize_depth(v3, torch.tensor([[0, 3, 1]]), size=size, backend="torch")
    assert not top[0, 6].any() and bottom[0, 6, 2:14].all()


def test_one_pixel_and_sliver_triangles_cover_their_centre_once():
    """Triangles around a single pixel centre; a fan of slivers meeting at a centre covers it once."""
    size = 8
    c = (3.5, 4.5)
    pts = [c]
    k = 7
    for t in range(k):
        ang = 2 * math.pi * t / k
        pts.append((c[0] + 0.9 * math.cos(ang), c[1] + 0.9 * math.sin(ang)))
    tri = torch.tensor([[0, 1 + t, 1 + (t + 1) % k] for t in range(k)])
    v = mesh_from_pixels(pts, 10.0, size)
    count = torch.zeros(size, size, dtype=torch.long)
    for f in range(k):
        _, cc = rasterize_depth(v, tri[f:f + 1], size=size, backend="torch")
        count += cc[0].long()
    assert count[4, 3] == 1 and count.sum() == 1


def test_batch_frames_are_independent():
    gen = torch.Generator().manual_seed(3)
    size = 32
    v1, tri = random_mesh(20, size, gen)
    v2, _ = random_mesh(20, size, gen)
    d, c = rasterize_depth(torch.cat([v1, v2]), tri, size=size, backend="torch")
    d1, c1 = rasterize_depth(v1, tri, size=size, backend="torch")
    d2, c2 = rasterize_depth(v2, tri, size=size, backend="torch")
    assert torch.equal(c, torch.cat([c1, c2])) and torch.equal(d, torch.cat([d1, d2]))
    # chunking over the batch changes nothing
    dc, cc = rasterize_clip_torch(clip_from_camera(torch.cat([v1, v2])), tri, size, max_triangles_per_chunk=1)
    assert torch.equal(cc, c) and torch.equal(dc, d)


def test_clipping_near_plane_and_frame_border():
    """A quad crossing the near plane and the image border: only the part in front of znear is drawn,
    no NaN, and the depth of the drawn part is exact."""
    size = 32
    # plane x = const, spanning Zc 2..12 (crosses znear = 5): left edge at Zc 2, right at 12
    v = torch.tensor([[[0.3, -0.5, 2.0], [0.3, 0.5, 2.0], [0.3, 0.5, 12.0], [0.3, -0.5, 12.0]]])
    d, c = rasterize_depth(v, torch.tensor([[0, 1, 2], [0, 2, 3]]), size=size, backend="torch")
    assert torch.isfinite(d).all() and c.any()
    assert (d[c] >= 5.0 - 1e-4).all() and (d[c] <= 12.0 + 1e-4).all()
    # a large fronto-parallel plane beyond the frame covers every pixel exactly at its depth
    big = torch.tensor([[[-50.0, -50.0, 9.0], [50.0, -50.0, 9.0], [50.0, 50.0, 9.0], [-50.0, 50.0, 9.0]]])
    d, c = rasterize_depth(big, torch.tensor([[0, 1, 2], [0, 2, 3]]), size=size, backend="torch")
    assert c.all() and torch.allclose(d, torch.full_like(d, 9.0), atol=1e-4)
    # behind the camera / beyond zfar: nothing
    for z in (-3.0, 20.0):
        far = big.clone()
        far[..., 2] = z
        d, c = rasterize_depth(far, torch.tensor([[0, 1, 2], [0, 2, 3]]), size=size, backend="torch")
        assert not c.any() and (d == 0).all()


def test_clipped_at_the_frame_border_like_unclipped():
    """Triangles reaching far outside the frame are clipped into fans; inside the frame they cover what the
    whole triangle covers, except pixels whose centres lie within snapping distance of an edge."""
    size = 32
    pts = [(-30.3, 10.2), (20.7, -15.1), (25.2, 40.9), (50.1, 3.3), (8.4, 60.2), (31.0, 31.0),
           (-8.0, -9.0), (40.0, 12.5), (12.0, 45.0)]
    v = mesh_from_pixels(pts, [9.0, 10.0, 11.0] * 3, size)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    pos = clip_from_camera(v)
    d, c = rasterize_clip_torch(pos, tri, size)
    rd, rc = dense_reference(pos, tri, size, frustum=False)
    assert int((c != rc).sum()) <= 3 and c.sum() > 300
    both = c & rc
    assert torch.allclose(d[both].double(), rd[both], rtol=1e-4)


def test_bad_input_no_crash_no_nan():
    size = 16
    tri = torch.tensor([[0, 1, 2], [0, 0, 1], [3, 4, 5]])
    v = torch.tensor([[[0.0, 0.0, 10.0], [0.2, 0.0, 10.0], [0.0, 0.2, 10.0],
                       [float("nan"), 0.0, 10.0], [0.1, 0.1, 0.0], [0.0, float("inf"), 10.0]]])
    d, c = rasterize_depth(v, tri, size=size, backend="torch")
    assert torch.isfinite(d).all() and c.any()
    # collinear (degenerate) triangle and all-zero vertices
    v0 = torch.zeros(2, 3, 3)
    d, c = rasterize_depth(v0, torch.tensor([[0, 1, 2]]), size=size, backend="torch")
    assert not c.any() and torch.isfinite(d).all()
    # empty mesh, empty batch
    d, c = rasterize_depth(torch.zeros(2, 0, 3), torch.zeros(0, 3, dtype=torch.long), size=size, backend="torch")
    assert d.shape == (2, size, size) and not c.any()
    d, c = rasterize_depth(torch.zeros(0, 3, 3), torch.tensor([[0, 1, 2]]), size=size, backend="torch")
    assert d.shape == (0, size, size)
    with pytest.raises(ValueError):
        rasterize_depth(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 5]]), size=size, backend="torch")


def test_backend_choice():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("nvdiffrast", "cpu")
    with pytest.raises(ValueError, match="Unknown"):
        resolve_backend("opengl", "cpu")


@pytest.mark.skipif(not (torch.cuda.is_available() and nvdiffrast_available()), reason="needs CUDA and nvdiffrast")
def test_torch_backend_matches_nvdiffrast_on_cuda():
    gen = torch.Generator().manual_seed(7)
    v, tri = random_mesh(400, 224, gen, max_edge=8.0)
    v, tri = v.cuda(), tri.cuda()
    d0, c0 = rasterize_depth(v, tri, backend="torch")
    d1, c1 = rasterize_depth(v, tri, backend="nvdiffrast")
    assert int((c0 != c1).sum()) <= 2
    both = c0 & c1
    assert torch.allclose(d0[both], d1[both], rtol=1e-5)


def _bfm_topology():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for base in (root.parent, root.parent.parent):
        folder = base / "shared" / "bfm-topology"
        if (folder / "facemodel_info.mat").is_file() and (folder / "synthetic_meanshape.npy").is_file():
            return folder
    pytest.skip("the BFM topology in ../shared/bfm-topology is not present")


def test_real_bfm_mesh_coverage_is_exact_up_to_snapping():
    """The real BFM front mesh (70,789 triangles), posed: every pixel centre clearly inside a triangle is
    covered (no cracks along shared edges) and every covered centre is inside or within snapping distance."""
    import numpy as np
    from scipy.io import loadmat

    folder = _bfm_topology()
    tri = torch.from_numpy(loadmat(str(folder / "facemodel_info.mat"))["tri"].astype(np.int64) - 1)
    mean = torch.from_numpy(np.load(folder / "synthetic_meanshape.npy")).float()
    mean = mean - mean.mean(0)
    ang = torch.tensor([0.1, -0.35, 0.05])  # turned: the far cheek folds behind the nose
    c, s = ang.cos(), ang.sin()
    rx = torch.tensor([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = torch.tensor([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    v = mean @ (ry @ rx).T
    v = torch.stack([v[:, 0] + 0.05, v[:, 1], 10.0 - v[:, 2]], -1)[None]
    _, cov = rasterize_depth(v, tri, 224, backend="torch")
    pos = clip_from_camera(v)[0].double()
    p = torch.stack([(pos[:, 0] / pos[:, 3] + 1) * 112, (pos[:, 1] / pos[:, 3] + 1) * 112], -1)[tri]  # [F,3,2]
    lo = (p.amin(1) - 0.5).floor().long()
    oi, oj = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    px = lo[:, None, 0] + oi.reshape(1, -1)
    py = lo[:, None, 1] + oj.reshape(1, -1)
    cx, cy = px + 0.5, py + 0.5
    dist = []
    for k in range(3):
        a, b = p[:, k], p[:, (k + 1) % 3]
        d = b - a
        e = (d[:, None, 0] * (cy - a[:, None, 1]) - d[:, None, 1] * (cx - a[:, None, 0])) / d.norm(dim=1)[:, None]
        dist.append(e)
    d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    sd = torch.stack(dist) * area.sign()[None, :, None]
    inside_min = sd.amin(0)
    ok = (px >= 0) & (px < 224) & (py >= 0) & (py < 224) & (area.abs()[:, None] > 1e-9)
    must = torch.zeros(224, 224, dtype=torch.bool)
    may = torch.zeros(224, 224, dtype=torch.bool)
    sel = ok & (inside_min > 0.05)  # clearly inside (snapping moves corners by at most 1/32 px per axis)
    must[py[sel], px[sel]] = True
    sel = ok & (inside_min > -0.05)
    may[py[sel], px[sel]] = True
    assert must.sum() > 0.5 * cov.sum()  # the rest lie within 0.05 px of one of the many tiny edges
    assert not (must & ~cov[0]).any()
    assert not (cov[0] & ~may).any()
