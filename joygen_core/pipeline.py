"""The whole JoyGen job on files: video + driving audio -> lip-edited video, streamed and cached.

Stages, in order (each lives in its own sub-package; this module only orchestrates):

1. per-video work, cached on disk: decode the video in chunks -> face track (``morphable``) -> face crops ->
   masked-target and reference latents (``edit``) -> blend masks (``edit.blend``);
2. per-audio work: Whisper features (``audio``) and audio-driven expressions (``motion``) for every output
   frame, the output re-timed to the audio's length by the length policy (``video.length``);
3. per output chunk: the source frames read back (``video.io.FrameReader``), mouth depth rendered
   (``render``), the UNet edit and the paste (``edit``), the frames streamed to one H.264 + AAC encode.

The cache (:mod:`.cache`) is keyed by the video's content, the settings that shape the per-video work and the
identity of the model files, so driving the same video with new audio skips stage 1; a damaged entry is rebuilt,
a cache folder that cannot be written means a temporary cache, and after the run the least recently used entries
are evicted down to the cap. File problems (the output's folder) are found and leftovers of killed runs removed
before the work starts. Frames, latents and masks are
held one chunk at a time, and the heap is kept from fragmenting across stages (:mod:`.memory`); what still
scales with the length is the audio: the Whisper states (half precision, about 12 MB a minute) and the
HuBERT / A2M pass over the whole clip (a transient before the edit stage).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import (
    CACHE_FORMAT,
    VideoCache,
    evict,
    folder_problem,
    max_bytes,
    sweep_cache_leftovers,
    sweep_output_leftovers,
    usable_cache_root,
    video_digest,
)
from .errors import JoyGenError, MediaError
from .memory import fix_mmap_threshold, trim_heap, trimmed
from .video.io import AudioClip
from .weights import ModelStore

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "LipSyncOptions", "LipSyncReport", "PipelineModels", "VideoCache", "check_inputs",
           "check_output", "fingerprint", "lip_sync", "load_models", "video_digest"]


@dataclass
class LipSyncOptions:
    """Settings of one lip-sync run (defaults reproduce the official inference where it has one)."""

    length_mode: str = "pingpong"  # video fitted to the audio's length (official: ping-pong)
    use_depth: bool = True  # False: audio-only editing (black depth map)
    blend: str = "parsing"  # parsing (official BiSeNet) | landmarks | box
    reference_frame: int = -1  # -1: each frame is its own reference (official); else a fixed frame
    face_policy: str = "largest"
    smooth: bool = False
    seed: int = 0
    temperature: float = 0.2
    mouth_amp: float = 0.45
    batch_size: int = 8
    chunk_frames: int = 64
    raster_backend: str = "auto"
    crf: int = 18
    motion_amplitude: float = 1.0  # audio-driven mouth scaled around its mean expression (1: as predicted)
    motion_shift: float = 0.0  # audio-driven mouth delayed by this many frames (negative: earlier)

    def video_key(self) -> dict:
        """The settings that shape the cached per-video work."""
        return {"face_policy": self.face_policy, "smooth": self.smooth, "blend": self.blend,
                "reference_frame": self.reference_frame}


@dataclass
class PipelineModels:
    """Every model of the job, loaded once (the CLI and the all-in-one node build this)."""

    recon: object  # morphable.reconstruct.ReconModels
    whisper: object  # transformers WhisperEncoder
    edit: object  # edit.models.EditModels
    a2m: object | None = None  # motion.a2m model (None: depth from the video's own expressions)
    hubert: object | None = None
    parser: object | None = None  # BiSeNet (None unless blend == 'parsing')
    files: dict = field(default_factory=dict)  # name -> (size, mtime): part of the cache key
    untrained: bool = False  # True for the demo's built-in random models

    def identity(self) -> str:
        return json.dumps(self.files, sort_keys=True)


@dataclass
class LipSyncReport:
    """What a run did: counts and seconds per stage (the benchmark prints these)."""

    output: Path
    frames: int = 0
    fps: float = 0.0
    frames_with_face: int = 0
    cache_hit: bool = False
    seconds: dict = field(default_factory=dict)
    motion: object | None = None  # motion.types.Motion that drove the mouth depth (None: audio-only)
    face_track: object | None = None  # the face track fitted to the output length (for plots)


def fingerprint(weights: torch.nn.Module | torch.Tensor) -> str:
    """A cheap stable identity of loaded weights (a module's first and last tensors, or one tensor, such as the
    BFM's mean shape): part of the cache key."""
    params = list(weights.state_dict().values()) if isinstance(weights, torch.nn.Module) else [weights]
    h = hashlib.sha1()
    for t in (params[0], params[-1]) if params else ():
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _file_id(path: Path) -> list:
    st = path.stat()
    if path.is_dir():
        return [sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())]
    return [st.st_size, int(st.st_mtime)]


def load_models(store: ModelStore, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, *,
                use_depth: bool = True, blend: str = "parsing") -> PipelineModels:
    """Load every model the job needs from the official layout of ``store``; a missing file is a clear error."""
    from .audio.hubert import load_hubert
    from .audio.whisper import load_whisper_encoder
    from .edit.models import default_dtype, load_edit_models
    from .morphable.reconstruct import load_recon_models
    from .motion.a2m import load_a2m

    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    paths = {k: store.path(k) for k in ("bfm", "bfm_mp468", "face_recon", "whisper", "joygen_unet", "vae")}
    if use_depth:
        paths.update({k: store.path(k) for k in ("a2m", "a2m_config", "hubert")})
    if blend == "parsing":
        paths["face_parse"] = store.path("face_parse")
    recon = load_recon_models(paths["bfm"], paths["face_recon"], device, mp468_path=paths["bfm_mp468"])
    models = PipelineModels(recon=recon, whisper=load_whisper_encoder(paths["whisper"], device),
                            edit=load_edit_models(paths["joygen_unet"], paths["vae"], device, dtype),
                            files={k: _file_id(p) for k, p in paths.items()})
    if use_depth:
        models.a2m = load_a2m(paths["a2m"], paths["a2m_config"], device=device)
        models.hubert = load_hubert(paths["hubert"], device)
    if blend == "parsing":
        from .edit.parsing import load_face_parser

        models.parser = load_face_parser(paths["face_parse"], device)
    return models


# ---------------------------------------------------------------- checks before any work


def check_output(out: Path | str, *, overwrite: bool = False, inputs: tuple = ()) -> None:
    """Fail before any work when ``out`` cannot be written: it exists (without ``overwrite``), it is one of the
    ``inputs``, or its folder cannot be created or written (read-only, full). Leftovers of killed runs in that
    folder are removed."""
    out = Path(out)
    if out.is_dir():
        raise MediaError(f"{out} is a folder; give a file name for the output, such as {out / 'result.mp4'}.")
    if out.exists():
        if not overwrite:
            raise MediaError(f"{out} already exists; choose another name (outputs never overwrite files).")
        for i in inputs:
            if isinstance(i, (str, os.PathLike)) and Path(i).exists() and Path(i).samefile(out):
                raise MediaError(f"{out} is also an input; write the output to another file.")
    problem = folder_problem(out.parent, probe_bytes=1 << 20)
    if problem is not None:
        raise MediaError(f"Cannot write the output {out}: {problem}. Choose a writable folder for the output.")
    sweep_output_leftovers(out.parent)


def check_inputs(video: Path | str, audio: Path | str | AudioClip, out: Path | str, *,
                 overwrite: bool = False) -> None:
    """Everything about the files that can fail, checked in seconds before any model loads: the video probes, the
    audio has a decodable audio track, the output can be written (see :func:`check_output`)."""
    from .video.io import probe_audio, probe_video

    probe_video(video)
    if not isinstance(audio, AudioClip):
        probe_audio(audio)
    check_output(out, overwrite=overwrite, inputs=(video, audio))


def _heartbeat(folder: Path, progress: Callable[[str, int, int], None] | None,
               every: float = 60.0) -> Callable[[str, int, int], None]:
    """``progress`` that also touches ``folder`` once a minute: a build in progress never looks abandoned to the
    leftover sweep of another run, even while no file is written (face detection over a long video)."""
    last = [time.monotonic()]

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > every:
            last[0] = now
            with contextlib.suppress(OSError):
                os.utime(folder)
        if progress is not None:
            progress(stage, done, total)

    return report


def _build_cache(folder: Path, video: Path, models: PipelineModels, options: LipSyncOptions,
                 progress: Callable[[str, int, int], None] | None) -> None:
    """Stage 1 over the whole video, chunk by chunk, into ``folder`` (built aside, renamed when complete)."""
    from safetensors.torch import save_file

    from .edit import editor
    from .face.track import FaceTrack
    from .morphable.reconstruct import detect_all, reconstruct, smooth_detections
    from .video.io import iter_frames, probe_video

    info = probe_video(video)
    tmp = VideoCache(folder).partial_folder()
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    progress = _heartbeat(tmp, progress)
    try:
        recon, edit = models.recon, models.edit
        # Faces of the whole video first (small), so tracking and smoothing see across chunk borders.
        det = detect_all(trimmed(iter_frames(video, chunk_size=options.chunk_frames)), recon.detector,
                         options.face_policy,
                         batch_size=options.chunk_frames,
                         progress=None if progress is None else (lambda d, t: progress("faces", d, info.frame_count)))
        if options.smooth:
            det = smooth_detections(det, float(info.fps))
        tracks, done = [], 0
        ref_lat = None
        for k, chunk in enumerate(iter_frames(video, chunk_size=options.chunk_frames)):
            frames = torch.from_numpy(chunk)
            n = frames.shape[0]
            track = reconstruct(frames, recon.detector, recon.regressor, recon.bfm, batch_size=options.chunk_frames,
                                policy=options.face_policy, smooth=options.smooth, fps=float(info.fps),
                                detections=det.slice(done, done + n))
            masked = torch.zeros(n, 4, 32, 32)
            reference = torch.zeros(n, 4, 32, 32)
            masks = np.zeros((n, *frames.shape[1:3]), np.uint8)
            idx = track.detected.nonzero().squeeze(1)
            if idx.numel():
                crops = editor.face_crops(frames[idx], track.box[idx])
                masked[idx], reference[idx] = editor.reference_latents(edit, crops, options.batch_size)
                for j in range(0, idx.numel(), options.batch_size):  # float frame-sized masks: a few at a time
                    b = idx[j:j + options.batch_size]
                    m = editor.blend_masks_for(frames[b], track.box[b], track.lm68[b], options.blend, models.parser)
                    masks[b.numpy()] = (m.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            save_file({"masked": masked.half(), "reference": reference.half()},
                      str(tmp / f"latents_{k:05d}.safetensors"))
            np.savez_compressed(tmp / f"masks_{k:05d}.npz", masks=masks)
            tracks.append(track)
            done += n
            del frames, masks
            trim_heap()
            if progress is not None:
                progress("video", done, info.frame_count)
        if not tracks:
            raise MediaError(f"{video} holds no decodable video frames.")
        full = FaceTrack.concat(tracks)
        full.fps = float(info.fps)
        if options.reference_frame >= 0:
            r = options.reference_frame
            if not (0 <= r < len(full)) or not bool(full.detected[r]):
                raise JoyGenError(f"Reference frame {r} has no face (or the video has {len(full)} frames): "
                                  "pick a frame where the face is visible, or -1 (each frame its own reference).")
            frame = torch.from_numpy(next(iter_frames(video, chunk_size=1, start=r, max_frames=1)))
            ref_lat = editor.encode(edit, editor.to_vae_input(editor.face_crops(frame, full.box[r:r + 1])))
            save_file({"reference": ref_lat.half()}, str(tmp / "fixed_reference.safetensors"))
        full.save(tmp / "track.safetensors")
        VideoCache.finish(tmp, folder, {"frames": len(full), "chunk": options.chunk_frames, "fps": float(info.fps),
                                        "faces": int(full.detected.sum()), "video": str(video)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- per-audio work


def audio_conditioning(models: PipelineModels, whisper16k: torch.Tensor, motion16k: torch.Tensor, fps: float,
                       n_out: int, options: LipSyncOptions, progress: Callable[[str, int, int], None] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(Whisper states [T50,5,384] half, frame windows [n_out,10], expressions [n_out,64] or None).

    ``whisper16k`` / ``motion16k``: the signals the official scripts give each model
    (:func:`joygen_core.audio.prepare.to_mono_16k` / :func:`~joygen_core.audio.prepare.to_motion_16k`).
    """
    from .audio.whisper import whisper_hidden_states
    from .audio.windows import frame_windows
    from .motion.a2m import audio_to_motion
    from .motion.adjust import adjust_motion

    states = whisper_hidden_states(models.whisper, whisper16k, dtype=torch.float16)
    windows = frame_windows(n_out, fps, states.shape[0])
    if progress is not None:
        progress("audio", 1, 2)
    exp = None
    if options.use_depth:
        motion = audio_to_motion(models.a2m, models.hubert, motion16k, fps, n_out, seed=options.seed,
                                 temperature=options.temperature, mouth_amp=options.mouth_amp)
        motion = adjust_motion(motion, amplitude=options.motion_amplitude, shift_frames=options.motion_shift)
        exp = motion.exp
    if progress is not None:
        progress("audio", 2, 2)
    return states, windows, exp


def _features(states: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    from .audio.whisper import positional_encoding

    f = states[windows].float().reshape(windows.shape[0], -1, states.shape[-1])
    return f + positional_encoding(f.shape[1], f.shape[2])


def _runs(index: torch.Tensor) -> Iterator[tuple[int, int, int, bool]]:
    """Split source indices into contiguous runs: (position in index, start, stop, descending)."""
    i, n = 0, index.numel()
    idx = index.tolist()
    while i < n:
        j = i + 1
        if j < n and idx[j] == idx[i] - 1:
            while j < n and idx[j] == idx[j - 1] - 1:
                j += 1
            yield i, idx[j - 1], idx[i] + 1, True
        else:
            while j < n and idx[j] == idx[j - 1] + 1:
                j += 1
            yield i, idx[i], idx[j - 1] + 1, False
        i = j


def _source_frames(reader, index: torch.Tensor) -> torch.Tensor:
    """Frames at ``index`` (ascending or descending runs, repeats allowed), read in as few passes as possible."""
    parts = []
    for _, start, stop, desc in _runs(index):
        block = reader.read(start, stop)
        parts.append(block[::-1] if desc else block)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))


def lip_sync(video: Path | str, audio: Path | str | AudioClip, out: Path | str, models: PipelineModels,
             options: LipSyncOptions | None = None, *, cache_root: Path | str | None = None,
             overwrite: bool = False, progress: Callable[[str, int, int], None] | None = None,
             cache_max_gb: float | None = None) -> LipSyncReport:
    """Edit ``video`` so its lips follow ``audio``; write ``out`` (H.264 + AAC, the driving audio, the video's fps).

    ``audio`` may be an audio file, a video with sound, or a decoded ``AudioClip``. ``cache_root``: where
    per-video caches live (:func:`joygen_core.cache.default_cache_dir` is the usual place; None, or a folder that
    cannot be written, means a temporary cache deleted afterwards); after the run the least recently used entries
    are evicted down to ``cache_max_gb`` (None: ``$JOYGEN_CACHE_MAX_GB`` or 20 GB). ``progress(stage, done,
    total)``, stage in faces / video / audio / edit. The output's folder is checked before any work, and the
    output appears only when complete.
    """
    import tempfile

    from .audio.prepare import finite_audio, to_mono_16k, to_motion_16k
    from .edit import editor
    from .render.depth import render_mouth_depth
    from .video.io import FrameReader, probe_video, read_audio, write_video
    from .video.length import fit_length, frames_for_duration

    options = options or LipSyncOptions()
    fix_mmap_threshold()
    video, out = Path(video), Path(out)
    limit = max_bytes(cache_max_gb)
    check_output(out, overwrite=overwrite, inputs=(video, audio))
    report = LipSyncReport(output=out)
    t0 = time.perf_counter()
    info = probe_video(video)
    clip = audio if isinstance(audio, AudioClip) else read_audio(audio)
    if clip.waveform.shape[-1] == 0:
        raise MediaError("The driving audio holds no samples.")
    # cleaned once (NaN / inf -> silence, one warning) for the models and the output track alike
    clip = AudioClip(finite_audio(clip.waveform, "The driving audio"), clip.sample_rate)
    # before the long per-video pass, so bad audio fails at once; mono input is the same signal for both
    whisper16k = to_mono_16k(clip.waveform, clip.sample_rate)
    motion16k = whisper16k if clip.channels == 1 or not options.use_depth else to_motion_16k(clip.waveform,
                                                                                           clip.sample_rate)
    fps = float(info.fps)

    root = None if cache_root is None else usable_cache_root(cache_root)
    tmp_cache = None
    if root is None:
        tmp_cache = root = Path(tempfile.mkdtemp(prefix="joygen_cache_"))
    else:
        sweep_cache_leftovers(root)
    using = contextlib.ExitStack()
    try:
        cache = VideoCache(root / VideoCache.key(video, options, models))
        report.cache_hit = cache.open()
        if not report.cache_hit:
            _build_cache(cache.folder, video, models, options, progress)
        using.enter_context(cache.in_use())
        report.seconds["video (track, latents, masks)"] = time.perf_counter() - t0
        track = cache.track()
        meta = cache.meta()
        n_src, chunk_len = meta["frames"], meta["chunk"]
        n_audio = frames_for_duration(clip.duration, info.fps)
        index = fit_length(n_src, n_audio, options.length_mode)
        n_out = int(index.numel())
        if n_out < n_audio:  # trim: the video ran out first, so the audio track ends with it
            clip = AudioClip(clip.waveform[:, : int(round(n_out / fps * clip.sample_rate))], clip.sample_rate)
        report.frames, report.fps = n_out, fps

        t1 = time.perf_counter()
        states, windows, exp = audio_conditioning(models, whisper16k, motion16k, fps, n_out, options, progress)
        del whisper16k, motion16k
        trim_heap()
        report.seconds["audio (whisper, motion)"] = time.perf_counter() - t1
        report.face_track = track.select(index)
        if exp is not None:
            from .motion.types import Motion

            report.motion = Motion(exp, fps)

        edit = models.edit
        black = None if options.use_depth else editor.black_depth_latent(edit)
        fixed_ref = None
        if options.reference_frame >= 0:
            from safetensors.torch import load_file

            fixed_ref = load_file(str(cache.folder / "fixed_reference.safetensors"))["reference"].float()
        timing = {"read": 0.0, "depth": 0.0, "edit": 0.0}

        def frames_out() -> Iterator[np.ndarray]:
            if progress is not None:
                progress("edit", 0, n_out)
            with FrameReader(video) as reader:
                for a in range(0, n_out, options.chunk_frames):
                    src = index[a:a + options.chunk_frames]
                    ts = time.perf_counter()
                    frames = _source_frames(reader, src)
                    timing["read"] += time.perf_counter() - ts
                    sub = track.select(src)
                    sel = sub.detected.nonzero().squeeze(1)
                    report.frames_with_face += int(sel.numel())
                    if sel.numel():
                        masked, ref, masks = cache.gather(src[sel], chunk_len)
                        if fixed_ref is not None:
                            ref = fixed_ref.expand(sel.numel(), -1, -1, -1)
                        ts = time.perf_counter()
                        if options.use_depth:
                            e = exp[a:a + options.chunk_frames][sel]
                            mouth, _ = render_mouth_depth(sub.select(sel), e, models.recon.bfm, options.raster_backend,
                                                          preview=False)
                            depth = editor.depth_latents(edit, mouth, options.batch_size)
                        else:
                            depth = black
                        timing["depth"] += time.perf_counter() - ts
                        ts = time.perf_counter()
                        audio_feats = _features(states, windows[a:a + options.chunk_frames][sel])
                        frames[sel] = editor.edit_chunk(edit, frames[sel], sub.box[sel], masked, ref, depth,
                                                        audio_feats, masks, options.batch_size)
                        timing["edit"] += time.perf_counter() - ts
                    if progress is not None:
                        progress("edit", min(a + options.chunk_frames, n_out), n_out)
                    yield frames.numpy()
                    del frames
                    trim_heap()

        write_video(out, frames_out(), fps=info.fps, audio=clip, crf=options.crf, overwrite=overwrite)
        report.seconds["read frames"] = timing["read"]
        report.seconds["mouth depth (render + encode)"] = timing["depth"]
        report.seconds["edit (UNet, decode, blend)"] = timing["edit"]
        report.seconds["total"] = time.perf_counter() - t0
        if report.frames_with_face == 0:
            log.warning("No face was found in %s: the output is the input video with the new audio.", video)
        if tmp_cache is None:
            try:
                evict(root, limit, keep=[cache.folder])
            except OSError as exc:  # the output is written: a cache that cannot be trimmed is not a failed run
                log.warning("Could not trim the video cache in %s: %s", root, exc)
        return report
    finally:
        using.close()
        if tmp_cache is not None:
            shutil.rmtree(tmp_cache, ignore_errors=True)
