"""Five-point face alignment into the 224x224 crop of Deep3DFaceRecon, and its exact inverse.

Official (Deep3DFaceRecon ``util/preprocess.py`` ``align_img`` / ``POS`` / ``resize_n_crop_img``): the
five points, y flipped (``y' = H - 1 - y``), are fitted to a fixed 3D template by an orthographic
least-squares fit with 8 unknowns; ``s = 102 / mean(|R1|, |R2|)``; the frame is resized to
``(int(W*s), int(H*s))`` with PIL bicubic and cut to 224x224 at ``left``/``up`` (truncated toward zero),
zero outside the image.

PIL's bicubic resize is reproduced on batched tensors to the pixel (:mod:`joygen_core.pil_resize`), over
only the window of source pixels each crop reads.
"""

from __future__ import annotations

import torch

from ..pil_resize import clip8, pil_taps

CROP = 224
RESCALE = 102.0
# official lm3d_std: five points of the 3D template (left eye, right eye, nose, mouth corners).
LM3D_STD = torch.tensor(
    [[-0.311487, 0.290361, 0.13378], [0.309799, 0.28972, 0.131795], [0.003253, -0.046179, 0.552442],
     [-0.252169, -0.381339, 0.224057], [0.248466, -0.381282, 0.222358]], dtype=torch.float64)



def _pos_matrix() -> torch.Tensor:
    """The [10,8] design matrix of the official POS fit (rows x then y, per point)."""
    a = torch.zeros(10, 8, dtype=torch.float64)
    a[0::2, 0:3] = LM3D_STD
    a[0::2, 3] = 1
    a[1::2, 4:7] = LM3D_STD
    a[1::2, 7] = 1
    return a


def align_params(five: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
    """Official alignment (s, tx, ty) per frame from five points [B,5,2] (x, y frame pixels, y down).

    Returns float64 [B,3] on the CPU: float64 keeps the integer truncations of the crop identical
    to the official numpy code. ``t`` is in y-up coordinates (official ``y' = H - 1 - y``).
    """
    h = int(frame_size[0])
    pts = five.detach().to("cpu", torch.float64).reshape(-1, 5, 2).clone()
    pts[..., 1] = h - 1 - pts[..., 1]
    b = pts.reshape(-1, 10, 1)
    a = _pos_matrix().expand(b.shape[0], 10, 8)
    k = torch.linalg.lstsq(a, b, driver="gelsd").solution[..., 0]  # official: np.linalg.lstsq
    s = (torch.linalg.vector_norm(k[:, 0:3], dim=1) + torch.linalg.vector_norm(k[:, 4:7], dim=1)) / 2
    return torch.stack([RESCALE / s, k[:, 3], k[:, 7]], dim=1)


def crop_geometry(align: torch.Tensor, frame_size: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(resized_w, resized_h, left, up) int64 [B] each: official ``resize_n_crop_img`` arithmetic.

    ``w = int(W*s)``; ``left = int(w/2 - 112 + (tx - W/2)*s)``; ``up = int(h/2 - 112 + (H/2 - ty)*s)``,
    all truncated toward zero as numpy's ``astype(int32)``.
    """
    h0, w0 = float(frame_size[0]), float(frame_size[1])
    al = align.detach().to("cpu", torch.float64).reshape(-1, 3)
    s, tx, ty = al[:, 0], al[:, 1], al[:, 2]
    w = torch.trunc(w0 * s)
    h = torch.trunc(h0 * s)
    left = torch.trunc(w / 2 - CROP / 2 + (tx - w0 / 2) * s)
    up = torch.trunc(h / 2 - CROP / 2 + (h0 / 2 - ty) * s)
    return w.long(), h.long(), left.long(), up.long()


# ------------------------------------------------------------------ PIL bicubic, batched


def _window_matrix(src: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [B,K,n] coefficients over the smallest source window per frame, and its start [B]."""
    used = k != 0
    big = torch.iinfo(torch.long).max
    start = torch.where(used, src, big).amin(dim=(1, 2))
    start = torch.where(start == big, 0, start)
    stop = torch.where(used, src + 1, 0).amax(dim=(1, 2))
    n = max(int((stop - start).clamp(min=1).max().item()), 1)
    rel = (src - start[:, None, None]).clamp(0, n - 1)
    dense = torch.zeros(k.shape[0], k.shape[1], n, dtype=torch.float64)
    dense.scatter_add_(2, rel, k * used)
    return dense, start


def _gather_window(img: torch.Tensor, row0: torch.Tensor, nrows: int, col0: torch.Tensor, ncols: int
                   ) -> torch.Tensor:
    """img [B,C,H,W] -> [B,C,nrows,ncols] starting at per-frame (row0, col0); indices clamped (weights are 0 there)."""
    b, _, h, w = img.shape
    rows = (row0[:, None] + torch.arange(nrows)).clamp(0, h - 1).to(img.device)
    cols = (col0[:, None] + torch.arange(ncols)).clamp(0, w - 1).to(img.device)
    bi = torch.arange(b, device=img.device)[:, None, None]
    out = img.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def crop_faces(frames: torch.Tensor, align: torch.Tensor, max_elements: int = 1 << 26) -> torch.Tensor:
    """Official 224x224 crops: frames uint8 [B,H,W,3] -> float [B,3,224,224] in 0..1, PIL-exact.

    Matches ``PIL.Image.resize((int(W*s), int(H*s)), BICUBIC).crop((left, up, left+224, up+224))``
    to the pixel (zero padding outside the frame). Work is done on the frames' device in float64,
    only over the window of source pixels each crop reads, as many frames at a time as keep each
    float64 window batch under ``max_elements`` values (512 MB by default).
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"crop_faces wants uint8 frames [B,H,W,3]; got {frames.dtype} {tuple(frames.shape)}")
    b, h, w, _ = frames.shape
    if b == 0:
        return torch.zeros(0, 3, CROP, CROP, device=frames.device)
    ws, hs, left, up = crop_geometry(align, (h, w))
    # a crop reads about (224 + 4 taps) / s source pixels per side
    side = ((CROP + 6) / align[:, 0].to("cpu", torch.float64).clamp(min=1e-3)).clamp(max=max(h, w)).max()
    chunk = max(1, int(max_elements // (3 * float(side) ** 2)))
    out = []
    for i in range(0, b, chunk):
        sl = slice(i, i + chunk)
        ar = torch.arange(CROP)
        src_x, kx = pil_taps(torch.tensor(float(w)), ws[sl], left[sl, None] + ar, "bicubic")
        src_y, ky = pil_taps(torch.tensor(float(h)), hs[sl], up[sl, None] + ar, "bicubic")
        mx, x0 = _window_matrix(src_x, kx)
        my, y0 = _window_matrix(src_y, ky)
        dev = frames.device
        win = _gather_window(frames[sl].permute(0, 3, 1, 2), y0, my.shape[2], x0, mx.shape[2]).to(torch.float64)
        tmp = clip8(win @ mx.transpose(1, 2).to(dev)[:, None])  # horizontal pass, uint8 in between
        res = clip8(my.to(dev)[:, None] @ tmp)  # vertical pass
        out.append(res.to(torch.float32) / 255.0)
    return torch.cat(out)


def paste_back(maps: torch.Tensor, align: torch.Tensor, frame_size: tuple[int, int], *,
               exact_uint8: bool = False) -> torch.Tensor:
    """Inverse of the crop: maps [B,224,224] -> [B,H,W] in frame pixels, zero outside the crop.

    Official (JoyGen inference): the 224 map is placed at (left, up) in a zero image of the resized
    size ``(int(W*s), int(H*s))``, which is resized to (W, H) with PIL bicubic. ``exact_uint8``:
    the maps hold integer values 0..255 (official uint8 'L' images) and the result is PIL's to the
    pixel (fixed-point, rounded, clipped); else the same taps in float, unrounded (any value range).
    """
    if maps.ndim != 3 or tuple(maps.shape[1:]) != (CROP, CROP):
        raise ValueError(f"paste_back wants maps [B,224,224]; got {tuple(maps.shape)}")
    h, w = int(frame_size[0]), int(frame_size[1])
    b = maps.shape[0]
    dev = maps.device
    out = torch.zeros(b, h, w, dtype=maps.dtype, device=dev)
    if b == 0:
        return out
    ws, hs, left, up = crop_geometry(align, (h, w))
    fixed = bool(exact_uint8)
    # taps over every output pixel, then keep only those reading the map window [left, left+224)
    src_x, kx = pil_taps(ws, torch.tensor(float(w)), torch.arange(w).expand(b, w), "bicubic", fixed)
    src_y, ky = pil_taps(hs, torch.tensor(float(h)), torch.arange(h).expand(b, h), "bicubic", fixed)
    rel_x = src_x - left[:, None, None]
    rel_y = src_y - up[:, None, None]
    kx = kx * ((rel_x >= 0) & (rel_x < CROP))
    ky = ky * ((rel_y >= 0) & (rel_y < CROP))
    # output rows / columns that read anything: a window per frame
    ox = (kx != 0).any(-1)
    oy = (ky != 0).any(-1)
    if not bool(ox.any()) or not bool(oy.any()):
        return out
    ar_w, ar_h = torch.arange(w), torch.arange(h)
    x0 = torch.where(ox, ar_w, w).amin(1).clamp(max=w - 1)
    y0 = torch.where(oy, ar_h, h).amin(1).clamp(max=h - 1)
    nx = int((torch.where(ox, ar_w + 1, 0).amax(1) - x0).clamp(min=1).max())
    ny = int((torch.where(oy, ar_h + 1, 0).amax(1) - y0).clamp(min=1).max())
    ix = (x0[:, None] + torch.arange(nx)).clamp(max=w - 1)
    iy = (y0[:, None] + torch.arange(ny)).clamp(max=h - 1)
    bi = torch.arange(b)[:, None]
    kxw, rxw = kx[bi, ix], rel_x[bi, ix].clamp(0, CROP - 1)  # [B,nx,T]
    kyw, ryw = ky[bi, iy], rel_y[bi, iy].clamp(0, CROP - 1)
    mx = torch.zeros(b, nx, CROP, dtype=torch.float64).scatter_add_(2, rxw, kxw)
    my = torch.zeros(b, ny, CROP, dtype=torch.float64).scatter_add_(2, ryw, kyw)
    # windows that were clamped at the frame edge repeat an index: zero the repeats
    mx = mx * (x0[:, None] + torch.arange(nx) < w)[..., None]
    my = my * (y0[:, None] + torch.arange(ny) < h)[..., None]
    m = maps.to(torch.float64)
    tmp = m @ mx.transpose(1, 2).to(dev)  # horizontal pass [B,224,nx]
    if fixed:
        tmp = clip8(tmp)
    res = my.to(dev) @ tmp  # vertical pass [B,ny,nx]
    if fixed:
        res = clip8(res)
    # scatter each window into a frame padded by the window size, then cut the padding off
    pad = torch.zeros(b, h + ny, w + nx, dtype=maps.dtype, device=dev)
    rows = (y0[:, None] + torch.arange(ny)).to(dev)
    cols = (x0[:, None] + torch.arange(nx)).to(dev)
    pad[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]] = res.to(maps.dtype)
    out = pad[:, :h, :w].contiguous()
    return out


def paste_back_window(maps: torch.Tensor, align: torch.Tensor, frame_size: tuple[int, int], origin: torch.Tensor,
                      size: tuple[int, int]) -> torch.Tensor:
    """Windows of the exact (uint8) paste back: ``paste_back(maps, .., exact_uint8=True)`` read at frame pixels
    ``[y0, y0+ny) x [x0, x0+nx)`` per frame -> float64 [B,ny,nx] (integer values 0..255; 0 outside the frame).

    ``origin`` [B,2] (x0, y0) frame pixels, ``size`` (ny, nx). Only the window's taps are built and summed, so
    the cost follows the window, not the frame; each window pixel equals the full paste's to the bit (the
    fixed-point sums are exact integers in float64, whatever order they are added in).
    """
    if maps.ndim != 3 or tuple(maps.shape[1:]) != (CROP, CROP):
        raise ValueError(f"paste_back_window wants maps [B,224,224]; got {tuple(maps.shape)}")
    h, w = int(frame_size[0]), int(frame_size[1])
    b = maps.shape[0]
    ny, nx = max(int(size[0]), 0), max(int(size[1]), 0)
    dev = maps.device
    if b == 0 or ny == 0 or nx == 0:
        return torch.zeros(b, ny, nx, dtype=torch.float64, device=dev)
    org = torch.as_tensor(origin).to("cpu", torch.long).reshape(b, 2)
    ws, hs, left, up = crop_geometry(align, (h, w))

    def matrix(in_size, out_size, start, offset, n):
        # taps of output pixels start .. start+n-1 (outside [0, out_size): weight 0), kept where they read the map
        src, k = pil_taps(in_size, torch.tensor(float(out_size)), start[:, None] + torch.arange(n), "bicubic", True)
        rel = src - offset[:, None, None]
        k = k * ((rel >= 0) & (rel < CROP))
        return torch.zeros(b, n, CROP, dtype=torch.float64).scatter_add_(2, rel.clamp(0, CROP - 1), k)

    mx = matrix(ws, w, org[:, 0], left, nx)  # [B,nx,224]
    my = matrix(hs, h, org[:, 1], up, ny)  # [B,ny,224]
    # the vertical pass reads only some rows of the horizontal one: compute those alone
    rows = my.abs().sum((0, 1)).nonzero().squeeze(1)
    if rows.numel() == 0:
        return torch.zeros(b, ny, nx, dtype=torch.float64, device=dev)
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    tmp = clip8(maps[:, r0:r1].to(torch.float64) @ mx.transpose(1, 2).to(dev))  # horizontal pass [B,r,nx]
    return clip8(my[:, :, r0:r1].to(dev) @ tmp)  # vertical pass [B,ny,nx]
