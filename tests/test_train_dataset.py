"""The training dataset on a tiny synthetic prepared folder: the sample contract, the paper's augmentations
measured over 1,000 samples, reference frames, short clips, determinism, splits and config checks."""

from __future__ import annotations

import json
import pickle
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from joygen_core.audio.whisper import positional_encoding
from joygen_core.errors import JoyGenError
from train import prepare as P
from train.dataset import DataConfigError, build_dataset, reference_index, validate_data_config

S = 256
BLOB = (slice(170, 190), slice(110, 150))  # the mouth depth of every synthetic frame (lower half)
MARK = (slice(160, 200), slice(100, 160))  # a bright square on the face around it
ID = (slice(0, 8), slice(0, 8))  # the frame number, written into the crop's corner


def make_prepared(root, videos: dict[str, list[int]]):
    """A prepared folder in the real on-disk format: per video a video.json, per clip the four files.

    Every face is the same picture (a gradient with a bright square) except its corner holding the frame
    number; the depth is a bright rectangle inside the square; the Whisper features of frame t equal t.
    """
    from safetensors.torch import save_file

    yy, xx = np.mgrid[0:S, 0:S]
    base = np.stack([xx % 120 + 20, yy % 110 + 30, (xx + yy) % 100 + 50], -1).astype(np.uint8)  # <= 150
    base[MARK] = 250
    for vid, lengths in videos.items():
        folder = root / P.VIDEOS_DIR / vid
        folder.mkdir(parents=True)
        clips = []
        for k, n in enumerate(lengths):
            name = f"c{k:03d}"
            faces = np.repeat(base[None], n, 0)
            faces[(slice(None), *ID)] = np.arange(n, dtype=np.uint8)[:, None, None, None] * 3
            depth = np.zeros((n, S, S), np.uint8)
            depth[(slice(None), *BLOB)] = 200
            np.save(folder / f"{name}.face.npy", faces)
            np.save(folder / f"{name}.depth.npy", depth)
            feats = torch.arange(n, dtype=torch.float16)[:, None, None].expand(n, 50, 384).contiguous()
            save_file({"features": feats}, str(folder / f"{name}.whisper.safetensors"))
            clips.append({"name": name, "start": 0, "frames": n})
        (folder / P.VIDEO_META).write_text(json.dumps({"format": P.FORMAT, "video_id": vid, "source": f"/{vid}.mp4",
                                                       "fps": 25.0, "clips": clips}))
    P.rebuild_manifest(root)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("synthetic"), {"vidA": [30, 3], "vidB": [24, 1]})


@contextmanager
def one_thread():
    """Per-sample work is small: one thread, as in a DataLoader worker (and no fight over the shared CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _bbox(img: torch.Tensor, thr: float) -> tuple[float, float]:
    """Centre (x, y) of the pixels above ``thr`` in [H,W]."""
    ys, xs = torch.nonzero(img > thr, as_tuple=True)
    return float(xs.float().mean()), float(ys.float().mean())


def test_sample_contract(root):
    ds = build_dataset({"root": str(root)})
    assert len(ds) == 30 + 3 + 24 + 1
    with one_thread():
        samples = [ds[i] for i in range(0, len(ds), 3)]
    shapes = {"target": (3, S, S), "reference": (3, S, S), "masked": (3, S, S), "depth": (3, S, S),
              "audio": (50, 384), "depth_dropped": (), "mask": (1, S, S)}
    dropped = []
    for s in samples:
        assert {k: tuple(v.shape) for k, v in s.items()} == shapes
        assert s["depth_dropped"].dtype == torch.bool
        for k in ("target", "reference", "masked", "depth", "audio", "mask"):
            assert s[k].dtype == torch.float32, k
        for k in ("target", "reference", "masked", "depth"):
            assert s[k].min() >= -1 and s[k].max() <= 1, k
        assert (s["mask"][:, S // 2:] == 1).all() and (s["mask"][:, : S // 2] == 0).all()
        assert (s["masked"][:, S // 2:] == -1).all()  # the lower half black after normalisation
        assert torch.equal(s["masked"][:, : S // 2], s["target"][:, : S // 2])
        assert (s["depth"][:, : S // 2] == -1).all()  # depth only in the lower half
        if s["depth_dropped"]:
            assert (s["depth"] == -1).all()
        else:
            assert s["depth"].max() > 0 and torch.equal(s["depth"][0], s["depth"][2])
        dropped.append(bool(s["depth_dropped"]))
    assert any(dropped) and not all(dropped)
    # audio: the stored features of that very frame plus the UNet's positional encoding
    c, t = ds.locate(40)
    assert torch.allclose(ds[40]["audio"] - positional_encoding(50, 384), torch.full((50, 384), float(t)), atol=1e-5)


def test_augmentations_over_1000_samples(root):
    """Displacement within +-2% (5 px at 256, whole pixels, both extremes reached), depth dropped in about
    half, reference frames at least min_ref_distance away: measured on the samples themselves."""
    ds = build_dataset({"root": str(root), "crop_scale": [1.0, 1.0], "color_jitter": 0.0, "min_ref_distance": 5})
    x0, y0 = (BLOB[1].start + BLOB[1].stop - 1) / 2, (BLOB[0].start + BLOB[0].stop - 1) / 2
    shifts, drops, n = [], 0, 0
    with one_thread():
        for epoch in range(19):
            ds.set_epoch(epoch)
            for i in range(0, 30 + 24):  # frames of the two long clips (the short ones are tested apart)
                i = i if i < 30 else i + 3
                s = ds[i]
                p = ds.last_params
                n += 1
                c, t = ds.locate(i)
                ref_id = round(float((s["reference"][0, 0, 0] + 1) / 2 * 255) / 3)
                assert ref_id == p["reference"] and abs(p["reference"] - t) >= 5
                if s["depth_dropped"]:
                    drops += 1
                    continue
                x, y = _bbox(s["depth"][0], 0.0)
                shifts.append((x - x0, y - y0))
                assert (x - x0, y - y0) == pytest.approx(tuple(p["shift"]), abs=1e-6)
    assert n >= 1000
    assert 0.45 <= drops / n <= 0.55, drops / n
    d = torch.tensor(shifts)
    assert d.abs().max() <= 5 + 1e-6  # round(0.02 * 256)
    assert set(d[:, 0].round().int().tolist()) == set(range(-5, 6))  # every whole-pixel offset occurs
    assert set(d[:, 1].round().int().tolist()) == set(range(-5, 6))


def test_shared_crop_and_jitter(root):
    """One crop for target, reference and depth; one colour jitter for target and reference."""
    ds = build_dataset({"root": str(root), "crop_scale": [0.8, 1.0], "color_jitter": 0.1, "depth_drop": 0.0,
                        "seed": 3})
    still = build_dataset({"root": str(root), "crop_scale": [0.8, 1.0], "color_jitter": 0.0, "depth_drop": 0.0,
                           "seed": 3})
    with one_thread():
        for i in range(0, 30, 2):
            s = ds[i]
            p = ds.last_params
            top, left, side = p["crop"]
            assert 0.8 - 0.02 <= side * side / (S * S) <= 1.0
            scale = S / side
            # the depth blob sits where the face's square is, moved by the shift scaled by the crop
            mx, my = _bbox(s["target"].mean(0), 0.5)
            rx, ry = _bbox(s["reference"].mean(0), 0.5)
            dx, dy = _bbox(s["depth"][0], 0.0)
            assert (rx, ry) == pytest.approx((mx, my), abs=0.5)
            assert (dx - mx, dy - my) == pytest.approx((p["shift"][0] * scale, p["shift"][1] * scale), abs=1.0)
            # identical stored pictures apart from the id corner: identical after a shared crop and jitter
            assert torch.equal(s["target"][:, 16:], s["reference"][:, 16:])
            plain = still[i]  # the same draws without jitter: same crop, other colours
            assert still.last_params["crop"] == p["crop"] and not torch.equal(plain["target"], s["target"])
            assert torch.equal(plain["depth"], s["depth"])  # jitter is on images only


def test_reference_frames_and_short_clips(root):
    g = torch.Generator().manual_seed(0)
    assert {reference_index(10, 20, 5, g) for _ in range(400)} == set(range(0, 6)) | set(range(15, 20))
    # too short for the distance: the farthest frame, at once
    assert [reference_index(t, 3, 5, g) for t in range(3)] == [2, 0, 0]
    assert reference_index(0, 1, 5, g) == 0
    assert [reference_index(t, 6, 5, g) for t in range(6)] == [5, 5, 5, 0, 0, 0]
    ds = build_dataset({"root": str(root)})
    with one_thread():
        for i in range(30, 33):  # the 3-frame clip
            ds[i]
            assert ds.last_params["reference"] == [2, 0, 0][i - 30]
        ds[len(ds) - 1]  # the 1-frame clip: its only frame
        assert ds.last_params["reference"] == 0


def test_deterministic_given_seed_epoch_index(root):
    ds = build_dataset({"root": str(root), "seed": 7})
    again = pickle.loads(pickle.dumps(build_dataset({"root": str(root), "seed": 7})))
    other = build_dataset({"root": str(root), "seed": 8})
    with one_thread():
        a, b, c = ds[5], again[5], other[5]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)
        ds.set_epoch(1)
        assert not all(torch.equal(a[k], ds[5][k]) for k in a)
        batch = next(iter(torch.utils.data.DataLoader(again, batch_size=4)))
    assert batch["target"].shape == (4, 3, S, S) and batch["depth_dropped"].shape == (4,)
    assert batch["depth_dropped"].dtype == torch.bool


def test_splits_hold_whole_videos(root):
    cfg = {"root": str(root), "val_fraction": 0.5}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert {c.video for c in train.clips}.isdisjoint({c.video for c in val.clips})
    assert len(train) + len(val) == 58 and len(train) and len(val)
    named = build_dataset({"root": str(root), "val_clips": ["vidB"]}, "val")
    assert {c.clip for c in named.clips} == {"vidB/c000", "vidB/c001"}
    assert {c.clip for c in build_dataset({"root": str(root), "val_clips": ["vidA/c001"]}, "val").clips} == {
        "vidA/c000", "vidA/c001"}  # a clip name holds out its whole video
    assert len(build_dataset({"root": str(root)}, "val")) == 0
    with pytest.raises(ValueError, match="split"):
        build_dataset({"root": str(root)}, "test")


def test_config_is_validated(root, tmp_path):
    with pytest.raises(DataConfigError, match=r"unknown data config key\(s\) \['depth_dropout'\].*min_ref_distance"):
        validate_data_config({"root": str(root), "depth_dropout": 0.5})
    for bad in ({"depth_drop": 1.5}, {"crop_scale": [0.9, 0.8]}, {"min_ref_distance": 0}, {"size": "256"},
                {"val_clips": "vidA"}, {"depth_shift": -0.1}):
        with pytest.raises(DataConfigError, match=next(iter(bad))):
            validate_data_config({"root": str(root), **bad})
    with pytest.raises(DataConfigError, match="root"):
        validate_data_config({})
    with pytest.raises(JoyGenError, match="does not exist"):
        build_dataset({"root": str(tmp_path / "nothing")})
    cfg = validate_data_config({"root": root})
    assert cfg["min_ref_distance"] == 5 and cfg["depth_drop"] == 0.5 and cfg["depth_shift"] == 0.02
    assert cfg["crop_scale"] == [0.8, 1.0] and cfg["color_jitter"] == 0.1 and cfg["size"] == 256


def test_missing_files_are_reported(tmp_path):
    r = make_prepared(tmp_path / "d", {"v": [4]})
    (r / P.VIDEOS_DIR / "v" / "c000.depth.npy").unlink()
    with pytest.raises(JoyGenError, match="c000.depth.npy is missing"):
        build_dataset({"root": str(r)})
