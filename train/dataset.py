"""The training dataset: one sample per prepared frame, with the paper's augmentations.

Per sample (JoyGen paper section 4.5; official ``utils/dataset.py`` where it agrees):

- target: the frame's 256x256 face crop; reference: a frame of the same clip at least
  ``min_ref_distance`` frames away (official 5), drawn uniformly; a clip too short for that uses its
  farthest frame (the official loops forever there);
- mouth depth of the target, displaced by up to ``depth_shift`` of the crop (paper +-2%, whole pixels,
  :func:`joygen_core.render.augment.displace_mouth_depth`) and dropped (all black) in ``depth_drop`` of the
  samples (paper 50%, :func:`~joygen_core.render.augment.drop_depth`). The official code's displacement
  function does not exist and its error is swallowed, so its depth was always black: here it is applied;
- one random resized crop shared by target, reference and depth (scale ``crop_scale``, square; official
  0.8-1.0), then one colour jitter shared by target and reference (brightness / contrast / saturation
  ``color_jitter``, hue 0; official 0.1 on the two images stacked as one picture, so the factors and the
  contrast mean are shared), optional grayscale (the official code has p=0.1, the paper none: default 0);
- after augmentation, the depth's upper half is zeroed (official ``preprocess_depth_tensor``) and the
  masked target is the target with its lower half black;
- audio: the frame's Whisper features [50,384] with the UNet's positional encoding added.

Every random draw comes from a generator seeded by (``seed``, epoch, index): a sample is the same on
every run and in every DataLoader worker, so resumed training sees the same data (``set_epoch`` varies
the draws between epochs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from joygen_core.errors import JoyGenError

from .prepare import MANIFEST, VIDEOS_DIR, rebuild_manifest

log = logging.getLogger(__name__)

DATA_DEFAULTS: dict = {
    "root": None,  # the prepared folder (python -m train prepare --out)
    "min_ref_distance": 5,  # official: |ref - target| >= 5 frames
    "depth_drop": 0.5,  # paper: depth omitted in 50% of samples
    "depth_shift": 0.02,  # paper: random displacement about +-2% (5 px at 256)
    "crop_scale": [0.8, 1.0],  # official RandomResizedCrop scale, ratio 1
    "color_jitter": 0.1,  # official brightness / contrast / saturation 0.1, hue 0
    "grayscale": 0.0,  # official code 0.1, paper none
    "size": 256,
    "val_fraction": 0.0,  # share of videos held out for validation (whole videos: no leakage)
    "val_clips": [],  # video ids or clip names ("<video>/<clip>") held out for validation
    "seed": 0,
}
SPLITS = ("train", "val", "all")


class DataConfigError(JoyGenError, ValueError):
    """The data section of a training config is wrong (unknown key, bad value)."""


def validate_data_config(data_cfg: dict) -> dict:
    """The data config with defaults filled in; unknown keys and bad values raise :class:`DataConfigError`."""
    if not isinstance(data_cfg, dict):
        raise DataConfigError(f"the data config must be a mapping; got {type(data_cfg).__name__}")
    unknown = sorted(set(data_cfg) - set(DATA_DEFAULTS))
    if unknown:
        raise DataConfigError(f"unknown data config key(s) {unknown}; known keys: {sorted(DATA_DEFAULTS)}")
    cfg = {**DATA_DEFAULTS, **data_cfg}
    if cfg["root"] is None:
        raise DataConfigError("data config needs 'root': the folder written by `python -m train prepare --out`")

    def number(key: str, lo: float, hi: float) -> float:
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise DataConfigError(f"data config '{key}' must be a number in [{lo}, {hi}]; got {v!r}")
        return float(v)

    for key in ("min_ref_distance", "size", "seed"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < (0 if key == "seed" else 1):
            raise DataConfigError(f"data config '{key}' must be a {'non-negative' if key == 'seed' else 'positive'} "
                                  f"integer; got {cfg[key]!r}")
    cfg["depth_drop"] = number("depth_drop", 0.0, 1.0)
    cfg["depth_shift"] = number("depth_shift", 0.0, 0.5)
    cfg["color_jitter"] = number("color_jitter", 0.0, 1.0)
    cfg["grayscale"] = number("grayscale", 0.0, 1.0)
    cfg["val_fraction"] = number("val_fraction", 0.0, 1.0)
    cs = cfg["crop_scale"]
    if (not isinstance(cs, (list, tuple)) or len(cs) != 2 or not all(isinstance(x, (int, float)) for x in cs)
            or not 0 < cs[0] <= cs[1] <= 1):
        raise DataConfigError(f"data config 'crop_scale' must be [lo, hi] with 0 < lo <= hi <= 1; got {cs!r}")
    cfg["crop_scale"] = [float(cs[0]), float(cs[1])]
    if isinstance(cfg["val_clips"], str) or not isinstance(cfg["val_clips"], (list, tuple)):
        raise DataConfigError(f"data config 'val_clips' must be a list of names; got {cfg['val_clips']!r}")
    cfg["val_clips"] = [str(c) for c in cfg["val_clips"]]
    cfg["root"] = str(cfg["root"])
    return cfg


@dataclass(frozen=True)
class Clip:
    """One prepared clip: ``frames`` frames in ``folder`` under the file prefix ``name``."""

    clip: str
    video: str
    folder: Path
    name: str
    frames: int

    def file(self, kind: str) -> Path:
        return self.folder / f"{self.name}.{kind}"


def load_clips(root: Path | str) -> list[Clip]:
    """The clips listed in ``root/manifest.jsonl`` (rebuilt from the video folders when missing)."""
    root = Path(root)
    if not root.is_dir():
        raise JoyGenError(f"Prepared data folder {root} does not exist; run `python -m train prepare --out {root}`.")
    path = root / MANIFEST
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = rebuild_manifest(root)
    clips = [Clip(clip=r["clip"], video=r["video"], folder=root / VIDEOS_DIR / r["video"], name=r["name"],
                  frames=int(r["frames"])) for r in rows]
    for c in clips:
        for kind in ("face.npy", "depth.npy", "whisper.safetensors"):
            if not c.file(kind).is_file():
                raise JoyGenError(f"{c.file(kind)} is missing although {path} lists clip {c.clip}; prepare that "
                                  "video again (--overwrite) or rebuild the manifest (--manifest-only).")
        n = np.load(c.file("face.npy"), mmap_mode="r").shape[0]
        if n != c.frames:
            raise JoyGenError(f"{c.file('face.npy')} holds {n} frames, the manifest says {c.frames}; prepare "
                              "that video again (--overwrite).")
    return clips


def split_clips(clips: Sequence[Clip], split: str, val_fraction: float = 0.0, val_clips: Sequence[str] = (),
                ) -> list[Clip]:
    """Train / val / all. Validation holds whole videos: those named in ``val_clips`` (a video id or clip name),
    plus ``round(val_fraction * videos)`` more picked by a hash of their id (the same on every machine),
    never every video."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if split == "all":
        return list(clips)
    named = set(val_clips)
    videos = sorted({c.video for c in clips}, key=lambda v: hashlib.sha1(v.encode()).hexdigest())
    held = {c.video for c in clips if c.video in named or c.clip in named}
    n_frac = round(val_fraction * len(videos))
    if val_fraction > 0 and len(videos) > 1:
        n_frac = min(max(n_frac, 1), len(videos) - 1)
    for v in videos:
        if n_frac <= 0:
            break
        if v not in held:
            held.add(v)
            n_frac -= 1
    unknown = named - {c.video for c in clips} - {c.clip for c in clips}
    if unknown:
        log.warning("val_clips names not in the prepared data: %s", sorted(unknown)[:5])
    return [c for c in clips if (c.video in held) == (split == "val")]


def reference_index(t: int, n: int, min_distance: int, generator: torch.Generator) -> int:
    """A frame of a clip of ``n`` frames at least ``min_distance`` from ``t``, uniformly among those; when
    none is that far, the farthest frame (so a short clip never loops)."""
    left = max(0, t - min_distance + 1)  # candidates 0 .. t-d
    right = max(0, n - (t + min_distance))  # candidates t+d .. n-1
    if left + right == 0:
        return 0 if t >= n - 1 - t else n - 1
    k = int(torch.randint(left + right, (1,), generator=generator))
    return k if k < left else t + min_distance + (k - left)


class TalkingFaceDataset(Dataset):
    """Samples for the JoyGen UNet from a prepared folder (see the module docstring).

    ``__getitem__`` returns ``{"target", "reference", "masked", "depth"}`` float32 [3,S,S] in [-1,1],
    ``"audio"`` float32 [50,384], ``"depth_dropped"`` bool tensor, ``"mask"`` float32 [1,S,S] (1 on the lower
    half). ``last_params`` holds what the last call drew (reference frame, shift, crop, ...) for inspection.
    """

    def __init__(self, clips: Sequence[Clip], *, min_ref_distance: int = 5, depth_drop: float = 0.5,
                 depth_shift: float = 0.02, crop_scale: Sequence[float] = (0.8, 1.0), color_jitter: float = 0.1,
                 grayscale: float = 0.0, size: int = 256, seed: int = 0, max_open: int = 64):
        self.clips = list(clips)
        self.min_ref_distance = int(min_ref_distance)
        self.depth_drop = float(depth_drop)
        self.depth_shift = float(depth_shift)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.color_jitter = float(color_jitter)
        self.grayscale = float(grayscale)
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0
        self.max_open = int(max_open)
        self._starts = np.cumsum([0] + [c.frames for c in self.clips])
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.last_params: dict = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def set_epoch(self, epoch: int) -> None:
        """Vary the random draws by epoch (still deterministic given seed, epoch and index)."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict:  # DataLoader workers reopen the memory maps themselves
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def locate(self, index: int) -> tuple[int, int]:
        """(clip number, frame within the clip) of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        c = int(np.searchsorted(self._starts, index, side="right") - 1)
        return c, int(index - self._starts[c])

    def generator(self, index: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(seed[0]) << 31 ^ int(seed[1]))

    def _arrays(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        if c in self._open:
            self._open.move_to_end(c)
            return self._open[c]
        clip = self.clips[c]
        arrs = (np.load(clip.file("face.npy"), mmap_mode="r"), np.load(clip.file("depth.npy"), mmap_mode="r"))
        self._open[c] = arrs
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return arrs

    def _audio(self, c: int, t: int) -> torch.Tensor:
        from safetensors import safe_open

        from joygen_core.audio.whisper import positional_encoding

        with safe_open(str(self.clips[c].file("whisper.safetensors")), framework="pt") as f:
            feats = f.get_slice("features")[t].float()  # [50,384]
        return feats + positional_encoding(feats.shape[0], feats.shape[1])

    def _crop_box(self, h: int, w: int, g: torch.Generator) -> tuple[int, int, int]:
        """(top, left, side) of a square crop covering a uniform ``crop_scale`` share of the area."""
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * float(torch.rand((), generator=g))
        side = max(1, min(h, w, int(round((area * h * w) ** 0.5))))
        top = int(torch.randint(h - side + 1, (1,), generator=g))
        left = int(torch.randint(w - side + 1, (1,), generator=g))
        return top, left, side

    def _jitter(self, pair: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Shared colour jitter of target + reference [2,3,H,W] in 0..1, applied to the two stacked as one
        picture (official), in a random order like torchvision's ColorJitter."""
        import torchvision.transforms.v2.functional as TF

        j = self.color_jitter
        factors = (1 - j + 2 * j * torch.rand(3, generator=g)).clamp(min=0).tolist()
        order = torch.randperm(3, generator=g).tolist()
        gray = float(torch.rand((), generator=g)) < self.grayscale
        img = torch.cat([pair[0], pair[1]], dim=1)  # [3,2H,W]
        if j > 0:
            for k in order:
                if k == 0:
                    img = TF.adjust_brightness(img, factors[0])
                elif k == 1:
                    img = TF.adjust_contrast(img, factors[1])
                else:
                    img = TF.adjust_saturation(img, factors[2])
        if gray:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        h = pair.shape[2]
        return torch.stack([img[:, :h], img[:, h:]]), {"jitter": factors, "jitter_order": order, "grayscale": gray}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import torchvision.transforms.v2.functional as TF

        from joygen_core.edit.editor import lower_half_mask
        from joygen_core.render.augment import displace_mouth_depth, drop_depth

        c, t = self.locate(int(index))
        g = self.generator(index)
        n = self.clips[c].frames
        r = reference_index(t, n, self.min_ref_distance, g)
        faces, depths = self._arrays(c)
        pair = torch.from_numpy(np.stack([faces[t], faces[r]])).permute(0, 3, 1, 2).float() / 255.0  # [2,3,H,W]
        depth = torch.from_numpy(np.array(depths[t])).float()[None] / 255.0  # [1,H,W]
        depth, shift = displace_mouth_depth(depth, self.depth_shift, generator=g)
        depth, kept = drop_depth(depth, self.depth_drop, generator=g)
        H, W = pair.shape[2:]
        top, left, side = self._crop_box(H, W, g)
        S = self.size
        # one bilinear resize of the 7 stacked channels (images and depth share the crop); the crop is
        # never smaller than S when S is the stored size, where antialiasing changes nothing
        stack = torch.cat([pair.reshape(6, H, W), depth], dim=0)[None]
        stack = TF.resized_crop(stack, top, left, side, side, [S, S], antialias=side > S)[0]
        pair, depth = stack[:6].reshape(2, 3, S, S), stack[6:]
        pair, jitter = self._jitter(pair.clamp(0, 1), g)
        depth = depth.clamp(0, 1)
        depth[:, : S // 2] = 0.0  # official: the depth's upper half is removed after augmentation
        mask = lower_half_mask(S)[0]  # [1,S,S]
        target, reference = pair[0], pair[1]
        masked = target * (1.0 - mask)
        self.last_params = {"clip": c, "frame": t, "reference": r, "shift": shift[0].tolist(),
                            "crop": (top, left, side), "depth_dropped": not bool(kept[0]), **jitter}
        return {
            "target": target * 2 - 1,
            "reference": reference * 2 - 1,
            "masked": masked * 2 - 1,
            "depth": depth.expand(3, S, S) * 2 - 1,
            "audio": self._audio(c, t),
            "depth_dropped": torch.tensor(not bool(kept[0])),
            "mask": mask,
        }


def build_dataset(data_cfg: dict, split: str = "train") -> TalkingFaceDataset:
    """The dataset of one split from the ``data`` section of a training config (see :data:`DATA_DEFAULTS`)."""
    cfg = validate_data_config(data_cfg)
    clips = split_clips(load_clips(cfg["root"]), split, cfg["val_fraction"], cfg["val_clips"])
    if not clips and split != "val":
        raise JoyGenError(f"No prepared clips for split {split!r} in {cfg['root']}; run `python -m train prepare` "
                          "first (or lower val_fraction).")
    ds = TalkingFaceDataset(clips, min_ref_distance=cfg["min_ref_distance"], depth_drop=cfg["depth_drop"],
                            depth_shift=cfg["depth_shift"], crop_scale=cfg["crop_scale"],
                            color_jitter=cfg["color_jitter"], grayscale=cfg["grayscale"], size=cfg["size"],
                            seed=cfg["seed"])
    log.info("%s split: %d clips, %d frames from %s", split, len(clips), len(ds), cfg["root"])
    return ds
