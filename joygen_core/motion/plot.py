"""Mouth opening over time, as a number per frame and as a picture (PIL + numpy; no plotting dependency).

Mouth opening is the gap between the inner lips of the BFM face built from a frame's 64 expression
coefficients: the mean distance of the three upper inner-lip keypoints (iBUG 68 points 61, 62, 63, 0-based)
from the lower ones below them (67, 66, 65), in millimetres (the BFM front model is in decimetres). It is
measured on the BFM mean face (identity 0, no pose) so curves from different videos and motions compare:
only the expression differs. Without a BFM the plot falls back to expression activity, the distance of each
frame's coefficients from their mean over time (no unit), and says so in its title.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..face.track import COEFF_SPLITS, FaceTrack
from ..morphable.bfm import BFM
from .types import Motion

INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # iBUG 68 (0-based): upper inner lip, the lower one below it
DM_TO_MM = 100.0
COLOURS = ((31, 119, 180), (230, 110, 20), (44, 160, 44))  # first motion, second motion, face track
NO_FACE_SHADE = (232, 232, 232)
MIN_SPAN_MM = 4.0


def mouth_opening(exp: torch.Tensor, bfm: BFM) -> torch.Tensor:
    """Inner-lip gap [T] in mm of the BFM mean face with expressions ``exp`` [T,64] (only six vertices built)."""
    upper = torch.tensor([a for a, _ in INNER_LIP_PAIRS])
    lower = torch.tensor([b for _, b in INNER_LIP_PAIRS])
    kp = bfm.keypoints.cpu()
    verts = torch.cat([kp[upper], kp[lower]])  # [6] vertex ids
    rows = (verts[:, None] * 3 + torch.arange(3)[None, :]).reshape(-1)  # interleaved xyz rows of the bases
    basis = bfm.exp_base.cpu().double()[rows]  # [18,64]
    mean = bfm.meanshape.cpu().double()[verts].reshape(-1)  # [18]
    pts = (exp.double().cpu() @ basis.T + mean).reshape(-1, 2, len(INNER_LIP_PAIRS), 3)
    gap = torch.linalg.vector_norm(pts[:, 0] - pts[:, 1], dim=-1).mean(-1)
    return (gap * DM_TO_MM).float()


def expression_activity(exp: torch.Tensor) -> torch.Tensor:
    """Distance of each frame's expression from the mean over time [T] (no unit): the fallback without a BFM."""
    e = exp.double()
    return torch.linalg.vector_norm(e - e.mean(0, keepdim=True), dim=-1).float()


@dataclass
class Series:
    """One curve: ``values`` [T] (NaN where there is nothing to show, e.g. no face) at ``fps``."""

    label: str
    values: np.ndarray
    fps: float
    colour: tuple[int, int, int] = COLOURS[0]
    width: int = 2  # line width in pixels


def opening_series(motions: Sequence[Motion], bfm: BFM | None = None, track: FaceTrack | None = None,
                   labels: Sequence[str] | None = None) -> tuple[list[Series], str]:
    """The curves to draw and the y-axis label: mouth opening with a BFM, expression activity without."""
    if not motions:
        raise InputError("Nothing to plot: give at least one motion.")
    names = list(labels or [])
    names += [f"motion {i + 1}" for i in range(len(names), len(motions))]
    exps = [m.exp for m in motions]
    fpss = [float(m.fps) for m in motions]
    if track is not None:
        a, b = COEFF_SPLITS["exp"]
        exps.append(track.coeffs[:, a:b].float())
        fpss.append(float(track.fps) if track.fps else fpss[0])
        names.append("face track (video)")
    measure = (lambda e: mouth_opening(e, bfm)) if bfm is not None else expression_activity
    out = []
    for i, (name, e, f) in enumerate(zip(names, exps, fpss)):
        v = measure(e).numpy().astype(np.float64)
        if track is not None and i == len(exps) - 1:  # frames without a face: no curve, a grey band
            v[~track.detected.cpu().numpy().astype(bool)] = np.nan
        is_track = track is not None and i == len(exps) - 1
        # each later curve is wider and drawn under the earlier ones (the face track green and widest), so a curve
        # that coincides with another still shows as a rim around it
        out.append(Series(name, v, f, COLOURS[2] if is_track else COLOURS[i % 2], 2 + 2 * i))
    ylabel = "mouth opening (mm)" if bfm is not None else "expression activity (no BFM)"
    return out, ylabel


def nice_ticks(lo: float, hi: float, target: int = 6) -> np.ndarray:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    span = max(hi - lo, 1e-9)
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return np.arange(first, hi + step * 1e-6, step)


def _fmt(v: float, step: float) -> str:
    digits = max(0, -int(math.floor(math.log10(step))) if step > 0 else 0)
    return f"{v:.{digits}f}"


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size), True
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default(), False


def _fit(draw, text: str, font, room: float) -> str:
    """``text``, cut with an ellipsis when it is wider than ``room`` pixels."""
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "...", font=font) > room:
        text = text[:-1]
    return text.rstrip() + "..."


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _legend_entries(series: Sequence[Series]) -> list[tuple[str, tuple[int, int, int]]]:
    entries = [(x.label, x.colour) for x in series]
    if any((~np.isfinite(x.values)).any() for x in series):
        entries.append(("no face", NO_FACE_SHADE))
    return entries


def _legend_layout(entries: Sequence[tuple[str, tuple]], draw, font, left: int, right: int, top: int, s: int
                   ) -> list[tuple[int, int]]:
    """Top-left corner of each legend entry: in a row from ``left``, wrapped before ``right``."""
    out, x, y = [], left, top
    for name, _ in entries:
        w = 30 * s + int(draw.textlength(name, font=font)) + 18 * s
        if x + w > right and x > left:
            x, y = left, y + 18 * s
        out.append((x, y))
        x += w
    return out


def plot_series(series: Sequence[Series], ylabel: str, *, title: str = "Mouth opening", width: int = 960,
                height: int = 360, min_span: float = 0.0) -> np.ndarray:
    """Draw curves over time (seconds) with labelled axes, a grid and a legend -> uint8 [height, width, 3].

    The y axis spans at least ``min_span`` (centred on the data), so a nearly still mouth draws as a nearly
    flat line instead of being stretched to fill the plot.
    """
    from PIL import Image, ImageDraw

    width, height = int(width), int(height)
    if width < 240 or height < 160:
        raise InputError(f"The plot needs at least 240 x 160 pixels; got {width} x {height}")
    probe, scalable = _font(14)
    s = 2 if scalable else 1  # draw at twice the size and shrink: smooth lines
    font = _font(14 * s)[0] if scalable else probe
    small = _font(12 * s)[0] if scalable else probe
    big = _font(16 * s)[0] if scalable else probe
    W, H = width * s, height * s
    img = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, bottom = 64 * s, W - 16 * s, H - 44 * s
    entries = _legend_entries(series)
    corners = _legend_layout(entries, draw, small, left, right, 30 * s, s)  # one row under the title, wrapped
    top = corners[-1][1] + 26 * s
    if bottom - top < 40 * s:
        raise InputError(f"A {width} x {height} plot has no room for its curves under the legend; make it taller")

    t_end = max(max(len(x.values) - 1, 1) / x.fps for x in series)
    finite = np.concatenate([x.values[np.isfinite(x.values)] for x in series] + [np.zeros(0)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < min_span:  # widen around the data, never below 0 for data that is not
        mid = (hi + lo) / 2
        floor = min(lo, 0.0)
        lo = max(mid - min_span / 2, floor)
        hi = lo + min_span
    if hi - lo <= 1e-6:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(t: np.ndarray) -> np.ndarray:
        return left + (right - left) * t / t_end

    def py(v: np.ndarray) -> np.ndarray:
        return bottom - (bottom - top) * (v - lo) / (hi - lo)

    # frames without a face in the face track: grey bands behind everything
    for x in series:
        missing = ~np.isfinite(x.values)
        for a, b in _runs(missing):
            x0 = float(px(np.array(max(a - 0.5, 0) / x.fps)))
            x1 = float(px(np.array(min(b - 0.5, len(x.values) - 1) / x.fps)))
            draw.rectangle([x0, top, max(x1, x0 + s), bottom], fill=NO_FACE_SHADE)

    yt = nice_ticks(lo, hi)
    xt = nice_ticks(0.0, t_end, target=max(3, width // 110))
    ystep = float(yt[1] - yt[0]) if len(yt) > 1 else 1.0
    xstep = float(xt[1] - xt[0]) if len(xt) > 1 else 1.0
    grid = (225, 225, 225)
    for v in yt:
        y = float(py(np.array(v)))
        draw.line([(left, y), (right, y)], fill=grid, width=s)
        label = _fmt(float(v), ystep)
        tw = draw.textlength(label, font=small)
        draw.text((left - 6 * s - tw, y), label, fill=(60, 60, 60), font=small, anchor="lm" if scalable else None)
    for v in xt:
        x = float(px(np.array(v)))
        draw.line([(x, top), (x, bottom)], fill=grid, width=s)
        draw.text((x, bottom + 5 * s), _fmt(float(v), xstep), fill=(60, 60, 60), font=small,
                  anchor="mt" if scalable else None)

    # the first curve is filled down to the plot's floor, so an open mouth reads as a bump; lines are drawn
    # last to first, so the first motion is on top
    paths = []
    for x in series:
        xs, ys = px(np.arange(len(x.values)) / x.fps), py(x.values)
        paths.append([list(zip(xs[a:b].tolist(), ys[a:b].tolist())) for a, b in _runs(np.isfinite(x.values))])
    fill = tuple(int(255 - 0.18 * (255 - c)) for c in series[0].colour)
    for pts in paths[0]:
        if len(pts) > 1:
            draw.polygon(pts + [(pts[-1][0], bottom), (pts[0][0], bottom)], fill=fill)
    for x, runs in reversed(list(zip(series, paths))):
        for pts in runs:
            if len(pts) == 1:
                cx, cy = pts[0]
                draw.ellipse([cx - x.width * s, cy - x.width * s, cx + x.width * s, cy + x.width * s], fill=x.colour)
            else:
                draw.line(pts, fill=x.colour, width=x.width * s, joint="curve")
    draw.rectangle([left, top, right, bottom], outline=(80, 80, 80), width=s)

    # axis labels, title, legend
    draw.text(((left + right) / 2, H - 6 * s), "time (s)", fill=(0, 0, 0), font=font,
              anchor="md" if scalable else None)
    tw = int(draw.textlength(ylabel, font=font)) + 4 * s
    th = 20 * s
    label_img = Image.new("RGB", (tw, th), (255, 255, 255))
    ImageDraw.Draw(label_img).text((2 * s, 2 * s), ylabel, fill=(0, 0, 0), font=font)
    label_img = label_img.rotate(90, expand=True)
    img.paste(label_img, (2 * s, int((top + bottom) / 2 - label_img.height / 2)))
    draw.text((left, 8 * s), _fit(draw, title, big, right - left), fill=(0, 0, 0), font=big)
    for (name, colour), (lx, ly) in zip(entries, corners):  # the legend sits above the curves, never on them
        y = ly + 9 * s
        if colour == NO_FACE_SHADE:
            draw.rectangle([lx, y - 6 * s, lx + 22 * s, y + 6 * s], fill=colour, outline=(160, 160, 160))
        else:
            draw.line([(lx, y), (lx + 22 * s, y)], fill=colour, width=3 * s)
        draw.text((lx + 28 * s, y), name, fill=(0, 0, 0), font=small, anchor="lm" if scalable else None)
    if s > 1:
        img = img.resize((width, height), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8).copy()


def plot_mouth_opening(motions: Motion | Sequence[Motion], bfm: BFM | None = None, track: FaceTrack | None = None,
                       *, labels: Sequence[str] | None = None, title: str | None = None, width: int = 960,
                       height: int = 360) -> np.ndarray:
    """Mouth opening over time of one or more motions (and a face track's own mouth): uint8 [height, width, 3].

    With ``bfm`` the curves are the inner-lip gap in mm (:func:`mouth_opening`); without it expression
    activity, and the title says a BFM is needed for the opening. The face track's frames without a face are
    grey bands with no curve. Each curve is timed by its own fps, so motions at different rates line up.
    """
    if isinstance(motions, Motion):
        motions = [motions]
    series, ylabel = opening_series(list(motions), bfm, track, labels)
    if title is None:
        title = ("Mouth opening (inner-lip gap, BFM mean face)" if bfm is not None
                 else "Expression activity (connect a BFM to see the mouth opening in mm)")
    # at least 4 mm of axis: jitter of a closed mouth stays flat, a spoken syllable (5-20 mm) stands out
    return plot_series(series, ylabel, title=title, width=width, height=height,
                       min_span=MIN_SPAN_MM if bfm is not None else 0.0)
