"""The evaluation metrics on cases with known answers, and ``python -m train evaluate`` end to end.

FID: the closed form for Gaussians, the exact small-set route against the reference sqrtm route,
identical frame sets through the real FID Inception (random weights) giving 0. LSE: a stand-in
embedding whose video side equals the audio side k windows away gives offset k and the analytic
LSE-D; a video whose brightness follows its sound's loudness, encoded to MP4 with the audio k frames
ahead, gives offset k through the real readers and the MFCC front end.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from factory._metrics import write_fid_inception, write_syncnet
from joygen_core.errors import MediaError, ModelFileError
from train.metrics import fid as F
from train.metrics import syncnet as S

# ---------------------------------------------------------------- weight files


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_weights")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    return {"inception": write_fid_inception(root / F.WEIGHTS_NAME, rng),
            "syncnet": write_syncnet(root / S.WEIGHTS_NAME, rng)}


@pytest.fixture(scope="module")
def inception(weights):
    return F.load_fid_inception(weights["inception"])


def test_official_format_files_load_strictly(weights, tmp_path):
    assert isinstance(F.load_fid_inception(weights["inception"]), F.FIDInception)
    net = S.load_syncnet(weights["syncnet"])  # legacy serialisation, no num_batches_tracked
    state = torch.load(weights["syncnet"], weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert torch.equal(net.netcnnlip[0].weight, state["netcnnlip.0.weight"])
    assert tuple(state["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)
    assert tuple(state["netfclip.3.weight"].shape) == (1024, 512)
    modern = write_syncnet(tmp_path / "modern.model", np.random.default_rng(1), legacy=False)
    assert "netcnnaud.1.num_batches_tracked" in torch.load(modern, weights_only=True)
    S.load_syncnet(modern)


def test_wrong_weight_files_are_refused_clearly(weights, tmp_path):
    with pytest.raises(ModelFileError, match="not a valid FID Inception.*missing keys"):
        F.load_fid_inception(weights["syncnet"])
    with pytest.raises(ModelFileError, match="not a valid SyncNet.*missing keys"):
        S.load_syncnet(weights["inception"])
    import torchvision

    tv = tmp_path / "inception_v3_google.pth"
    torch.save(torchvision.models.inception_v3(weights=None, init_weights=False).state_dict(), tv)
    with pytest.raises(ModelFileError, match="torchvision's ImageNet Inception"):
        F.load_fid_inception(tv)
    state = torch.load(weights["syncnet"], weights_only=True)
    state["netfcaud.3.weight"] = state["netfcaud.3.weight"][:512]
    bad = tmp_path / "cut.model"
    torch.save(state, bad)
    with pytest.raises(ModelFileError, match="shape mismatch.*netfcaud.3.weight"):
        S.load_syncnet(bad)
    with pytest.raises(ModelFileError, match="does not exist"):
        S.load_syncnet(tmp_path / "absent.model")


# ---------------------------------------------------------------- FID


def _rotation(d: int, rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    q = _rotation(d, rng)
    a, b = rng.uniform(0.5, 2.0, d), rng.uniform(0.1, 3.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # commuting: Tr sqrt(S1 S2) = sum sqrt(a b)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = F.frechet_distance(mu1, s1, mu2, s2)
    assert got.method == "sqrtm" and not got.offset_used
    assert abs(got.value - expected) < 1e-9
    # 1-d Gaussians: (m1 - m2)^2 + (sd1 - sd2)^2
    assert abs(F.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]).value - (4 + 1)) < 1e-12
    assert abs(F.frechet_distance(mu1, s1, mu1, s1).value) < 1e-9


def test_singular_product_takes_the_eps_offset(monkeypatch):
    calls = []
    real = F._sqrtm

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real(a)

    monkeypatch.setattr(F, "_sqrtm", flaky)
    s = np.diag([1.0, 0.0])
    got = F.frechet_distance(np.zeros(2), s, np.zeros(2), s, eps=1e-6)
    assert got.offset_used and len(calls) == 2
    assert np.allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))
    assert abs(got.value) < 1e-5


def test_streaming_statistics_and_the_features_route():
    rng = np.random.default_rng(1)
    for n1, n2, d in ((10, 14, 32), (80, 60, 16)):  # fewer and more samples than dimensions
        x = rng.standard_normal((n1, d)) * rng.uniform(0.5, 2, d)
        y = rng.standard_normal((n2, d)) @ rng.standard_normal((d, d)) * 0.3 + 0.5
        sx = F.GaussianStats(d)
        for part in np.array_split(x, 3):
            sx.update(part + 1e3)  # a large offset: the shifted sums keep the covariance digits
        assert np.allclose(sx.mean, x.mean(0) + 1e3, atol=1e-9)
        assert np.allclose(sx.cov, np.cov(x, rowvar=False), atol=1e-9)
        sy = F.GaussianStats(d).update(y)
        ref = F.frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov, eps=1e-9)
        exact = F.frechet_distance_features(sx.features, sy.features)
        assert exact.value > 1.0
        assert abs(exact.value - ref.value) < 1e-6 * ref.value
        assert F.fid_score(sx, sy).method == ("features" if max(n1, n2) < d else "sqrtm")
    small = F.GaussianStats(4, keep=5).update(np.zeros((6, 4)))
    assert small.features is None
    with pytest.raises(ValueError, match="every row kept"):
        F.fid_score(small, small, method="features")


def test_identical_frames_give_zero_fid_and_different_ones_do_not(inception, face_frames):
    frames = torch.from_numpy(np.ascontiguousarray(face_frames[:4]))
    feats = F.inception_features(inception, frames, batch_size=2)
    assert feats.shape == (4, 2048) and feats.dtype == torch.float64
    assert feats.std(0).mean() > 1e-3  # the random network does not collapse its features
    again = F.inception_features(inception, frames.clone(), batch_size=4)  # other batching, same features
    assert torch.allclose(feats, again, atol=1e-5)
    a, b = F.GaussianStats().update(feats), F.GaussianStats().update(again)
    same = F.fid_score(a, b)
    assert same.method == "features" and abs(same.value) < 1e-6
    darker = (frames.float() * 0.6).to(torch.uint8)
    c = F.GaussianStats().update(F.inception_features(inception, darker))
    assert F.fid_score(a, c).value > 100 * max(abs(same.value), 1e-6)


@pytest.mark.slow
def test_identical_frames_zero_fid_by_the_reference_route(inception, face_frames):
    feats = F.inception_features(inception, torch.from_numpy(np.ascontiguousarray(face_frames[:8])))
    a = F.GaussianStats().update(feats)
    got = F.fid_score(a, a, method="sqrtm")
    assert got.method == "sqrtm" and abs(got.value) < 1e-3


def test_fid_inception_preprocessing(inception):
    """Inside the model: bilinear resize to 299 (align_corners False), then [0, 1] -> [-1, 1]."""
    small = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x = torch.nn.functional.interpolate(small, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        for name in inception._layers:
            x = getattr(inception, name)(x)
        assert torch.allclose(inception(small), x.flatten(1), atol=1e-5)


# ---------------------------------------------------------------- SyncNet: MFCC, windows, crops


def test_mfcc_rate_and_shape():
    sr = 16000
    t = np.arange(sr) / sr
    tone = np.where(t >= 0.5, 8000 * np.sin(2 * np.pi * 440 * t), 0.0)
    m = S.speech_mfcc(torch.from_numpy(tone))
    assert m.shape == (13, 1 + math.ceil((sr - 400) / 160)) and m.dtype == torch.float64  # 99 frames in 1 s
    energy = m[0].numpy()
    # frame j covers samples [160 j, 160 j + 400): the first one reaching 0.5 s (sample 8000) is j = 48
    assert energy[:48].max() < -20 < 10 < energy[48:].min()
    assert S.speech_mfcc(torch.zeros(2, 3200)).shape == (2, 13, 19)  # batched
    assert S.speech_mfcc(torch.ones(100)).shape == (13, 1)
    assert torch.equal(S.pcm16(torch.tensor([0.5, -1.0, 1.0, 1e-6])), torch.tensor([16384.0, -32768, 32767, 0]))


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    for n in (401, 16000, 40123):
        audio = (rng.standard_normal(n) * 3000).astype(np.int16)
        ref = psf.mfcc(audio, 16000).T
        ours = S.speech_mfcc(torch.from_numpy(audio.astype(np.float64))).numpy()
        assert np.abs(ours - ref).max() < 1e-9


def test_windows_follow_the_official_indexing():
    assert S.window_count(250, 160000) == 245  # min(250, 160000 // 640) - 5
    assert S.window_count(300, 64000) == 95
    mfcc = torch.arange(13 * 120, dtype=torch.float64).reshape(13, 120)
    w = S.audio_windows(mfcc, 26)
    assert w.shape == (26, 1, 13, 20)
    assert torch.equal(w[7, 0], mfcc[:, 28:48]) and torch.equal(w[25, 0], mfcc[:, 100:120])
    faces = torch.arange(12, dtype=torch.float32)[:, None, None, None].expand(12, 3, 4, 4)
    c = S.video_windows(faces, 8)
    assert c.shape == (8, 3, 5, 4, 4) and torch.equal(c[3, 0, :, 0, 0], torch.arange(3.0, 8.0))
    with pytest.raises(MediaError, match="too short"):
        S.audio_windows(mfcc, 27)


def test_crop_boxes_and_resize_follow_the_official_geometry():
    import cv2

    boxes = torch.tensor([[100.0, 80.0, 200.0, 200.0]]).repeat(20, 1)  # w 100, h 120: s = 60, centre (150, 140)
    found = torch.ones(20, dtype=torch.bool)
    found[5:9] = False
    boxes[5:9] = 0  # missing detections are interpolated, not zero boxes
    crop = S.syncnet_crop_boxes(boxes, found)
    assert (crop == np.array([140 - 60, 140 + 108, 150 - 84, 150 + 84])).all()

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 300, 320, 3), dtype=np.uint8)
    boxes3 = np.array([[40, 260, 30, 250], [-30, 200, 10, 240], [0, 300, 0, 320]])  # one reaches outside
    out = S.syncnet_face_crops(frames, boxes3)
    assert out.shape == (3, 224, 224, 3) and out.dtype == torch.uint8
    ref0 = cv2.resize(frames[0, 40:260, 30:250], (224, 224), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out[0].numpy().astype(int) - ref0).max() <= 1
    padded = np.pad(frames[1], ((30, 0), (0, 0), (0, 0)), constant_values=S.CROP_PAD_VALUE)[0:230, 10:240]
    ref1 = cv2.resize(padded, (224, 224), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out[1].numpy().astype(int) - ref1).max() <= 1
    with pytest.raises(MediaError, match="No face"):
        S.syncnet_crop_boxes(boxes, torch.zeros(20, dtype=torch.bool))


# ---------------------------------------------------------------- SyncNet: the metric


def _official_distances(v: torch.Tensor, a: torch.Tensor, vshift: int) -> torch.Tensor:
    """The official calc_pdist restated as a loop (zero-padded audio, pairwise_distance's eps)."""
    n = v.shape[0]
    out = torch.zeros(n, 2 * vshift + 1)
    for i in range(n):
        for j in range(2 * vshift + 1):
            k = i + j - vshift
            other = a[k] if 0 <= k < n else torch.zeros_like(a[0])
            out[i, j] = torch.linalg.vector_norm(v[i] - other + 1e-6)
    return out


@pytest.mark.parametrize("k", [4, 0, -7])
def test_offset_and_scores_from_shifted_embeddings(k):
    g = torch.Generator().manual_seed(3)
    n, d, vshift = 60, 16, 15
    e = torch.randn(n + 40, d, generator=g)  # e(t) for t in -20 .. n + 19
    audio = e[20:20 + n]
    video = e[20 - k:20 - k + n]  # video at t = audio at t - k: the lips lag the sound by k frames
    dists = S.sync_distances(video, audio, vshift)
    assert torch.allclose(dists, _official_distances(video, audio, vshift), atol=1e-5)
    got = S.sync_scores(dists, vshift)
    assert got.offset == k and got.windows == n
    # at the true offset only the windows whose partner falls in the zero padding add distance
    edge = range(k) if k > 0 else range(n + k, n)
    expected = sum(float(torch.linalg.vector_norm(video[i] + 1e-6)) for i in edge) / n
    assert abs(got.min_dist - expected) < 1e-4
    assert got.confidence > 1.0
    assert abs(got.confidence - (float(got.mean_dists.median()) - got.min_dist)) < 1e-6
    assert int(got.mean_dists.argmin()) == vshift - k


class _Recorder:
    """Stand-in SyncNet that keeps what it was fed."""

    def __init__(self):
        self.clips, self.mfcc = [], []

    def embed_video(self, clips):
        self.clips.append(clips)
        return clips.flatten(1)[:, :8]

    def embed_audio(self, mfcc):
        self.mfcc.append(mfcc)
        return mfcc.flatten(1)[:, :8]


def test_embed_clip_feeds_bgr_0_255_windows_in_batches():
    rng = np.random.default_rng(0)
    faces = torch.from_numpy(rng.integers(0, 256, (14, 224, 224, 3), dtype=np.uint8))
    samples = torch.from_numpy(rng.standard_normal(14 * 640) * 1000)
    rec = _Recorder()
    v, a = S.embed_clip(rec, faces, samples, batch_size=4)
    assert v.shape == a.shape == (9, 8)  # min(14, 8960 // 640) - 5 windows
    assert [c.shape[0] for c in rec.clips] == [4, 4, 1]
    clips = torch.cat(rec.clips)
    assert clips.dtype == torch.float32 and clips.shape == (9, 3, 5, 224, 224)
    # window 6, its third frame (= frame 8), channel 0 is the blue channel, unscaled
    assert torch.equal(clips[6, 0, 2], faces[8, :, :, 2].float())
    assert torch.equal(clips[6, 2, 2], faces[8, :, :, 0].float())
    mfcc = S.speech_mfcc(samples)
    assert torch.allclose(torch.cat(rec.mfcc)[6, 0], mfcc[:, 24:44].float())
    with pytest.raises(MediaError, match="too short"):
        S.embed_clip(rec, faces[:5], samples)


class _LoudnessEmbedder:
    """Stand-in SyncNet: video -> the 5 frames' mean brightness, audio -> the 5 frames' mean log energy
    (MFCC coefficient 0, 4 MFCC frames per video frame), each standardised."""

    @staticmethod
    def _norm(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp(min=1e-9)

    def embed_video(self, clips: torch.Tensor) -> torch.Tensor:
        assert clips.shape[1:] == (3, 5, 224, 224)
        return self._norm(clips.mean(dim=(1, 3, 4)))

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        assert mfcc.shape[1:] == (1, 13, 20)
        return self._norm(mfcc[:, 0, 0].reshape(-1, 5, 4).mean(-1))


def _loudness_video(path, k: int, n: int = 100, seed: int = 0):
    """A 25 fps MP4 whose frame t is as bright as the sound's loudness at frame t - k (16 kHz AAC)."""
    from joygen_core.video.io import AudioClip, write_video

    rng = np.random.default_rng(seed)
    level = rng.uniform(0.0, 1.0, n + abs(k) + 1)
    amp = 0.02 * 10 ** (2 * level)  # loudness in dB ~ level
    base = abs(k)
    noise = rng.standard_normal(n * 640) * np.repeat(amp[base:base + n], 640)
    bright = 40 + 170 * level[base - k:base - k + n]
    frames = np.broadcast_to(bright[:, None, None, None], (n, 32, 32, 3)).round().astype(np.uint8)
    clip = AudioClip(torch.from_numpy(np.clip(noise, -1, 1).astype(np.float32))[None], 16000)
    return write_video(path, iter([np.ascontiguousarray(frames)]), fps=25, audio=clip)


@pytest.mark.parametrize("k", [3, 0])
def test_audio_shifted_against_video_gives_the_offset(tmp_path, k):
    """Through MP4 encoding, our readers, 25 fps / 16 kHz PCM conversion, MFCC and the windowing."""
    from train.evaluate import sync_inputs

    video = _loudness_video(tmp_path / f"shift{k}.mp4", k)
    inputs = sync_inputs(video, None)
    assert inputs.faces.shape == (100, 224, 224, 3)
    assert abs(inputs.samples.shape[0] - 64000) <= 1024
    assert float(inputs.samples.abs().max()) > 1000  # int16 scale
    got = S.clip_sync_scores(_LoudnessEmbedder(), inputs.faces, inputs.samples)
    assert got.offset == k
    assert got.confidence > 0.5 and got.min_dist < 0.5


# ---------------------------------------------------------------- the command


def test_cli_evaluate_end_to_end(weights, face_video, tmp_path, capsys):
    from train.__main__ import main

    out = tmp_path / "report.json"
    rc = main(["evaluate", "--generated", str(face_video), "--real", str(face_video), "--inception",
               str(weights["inception"]), "--syncnet", str(weights["syncnet"]), "--max-seconds", "0.28",
               "--device", "cpu", "--name", "JoyGen", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| method | FID | LSE-D | LSE-C |" in printed and "| JoyGen |" in printed
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"JoyGen", "ground truth"}
    assert abs(rows["JoyGen"]["fid"]) < 1e-6 and rows["ground truth"]["fid"] is None  # identical frame sets
    assert rows["JoyGen"]["frames"] == 7
    for v in report["per_video"]:
        assert v["windows"] == 2 and v["face_found"] == 1.0
        assert math.isfinite(v["lse_d"]) and v["lse_c"] >= 0 and abs(v["offset"]) <= 15
    assert rows["JoyGen"]["lse_d"] == pytest.approx(rows["ground truth"]["lse_d"])  # same video, same score
    assert out.with_suffix(".md").read_text().startswith("Protocol: unpaired")


def test_cli_errors(weights, face_video, tmp_path):
    from train.__main__ import main

    common = ["--inception", str(weights["inception"]), "--syncnet", str(weights["syncnet"])]
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--generated", str(tmp_path / "empty"), "--real", str(face_video), *common]) == 2
    other = tmp_path / "other.mp4"
    other.write_bytes(face_video.read_bytes())
    assert main(["evaluate", "--generated", str(other), "--real", str(face_video), "--pairs", "paired",
                 *common]) == 2
    with pytest.raises(SystemExit):
        main(["evaluate", "--generated", str(face_video)])


def test_media_collection_and_pairing(tmp_path, face_video):
    from PIL import Image

    from train.evaluate import _pair_up, collect_media, image_chunks

    (tmp_path / "frames" / "clip").mkdir(parents=True)
    for i, size in enumerate([(20, 10), (20, 10), (30, 10)]):
        Image.new("RGB", size, (i, 0, 0)).save(tmp_path / "frames" / "clip" / f"{i:03d}.png")
    (tmp_path / "frames" / "notes.txt").write_text("not media")
    media = collect_media([tmp_path / "frames", face_video], "--real")
    assert media.videos == [face_video] and [p.name for p in media.images] == ["000.png", "001.png", "002.png"]
    chunks = list(image_chunks(media.images, chunk=8))
    assert [c.shape for c in chunks] == [(2, 10, 20, 3), (1, 10, 30, 3)]  # a size change starts a batch
    assert [c.shape[0] for c in image_chunks(media.images, stride=2)] == [1, 1]
    with pytest.raises(MediaError, match="no videos"):
        collect_media([tmp_path / "frames" / "notes.txt"], "--generated")
    gen = collect_media([face_video], "--generated")
    assert _pair_up(gen, collect_media([face_video], "--real")) == [(face_video, face_video)]
    with pytest.raises(MediaError, match="give videos"):
        _pair_up(gen, media)


def test_cli_paired_takes_the_real_sound(weights, face_video, face_frames, tmp_path):
    from joygen_core.video.io import probe_video, write_video
    from train.evaluate import evaluate

    silent = write_video(tmp_path / "gen" / face_video.name, iter([face_frames[:12]]), fps=25)
    assert not probe_video(silent).has_audio
    with pytest.raises(MediaError, match="without a sound track"):  # unpaired: the driving audio must be in the video
        evaluate([silent], [face_video], weights["inception"], weights["syncnet"], max_seconds=0.28,
                 face_crop="none", real_lse=False)
    report = evaluate([tmp_path / "gen"], [face_video], weights["inception"], weights["syncnet"], pairs="paired",
                      max_seconds=0.28, face_crop="none", real_lse=False)
    assert report.protocol == "paired" and [r.name for r in report.rows] == ["generated"]
    (video,) = report.per_video
    assert video.audio == str(face_video) and video.windows == 2 and video.face_found == 1.0
    assert report.fid["generated_frames"] == report.fid["real_frames"] == 7
    assert 0 <= report.rows[0].fid < 1.0  # the same frames re-encoded
