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
from .progress import Preview, ProgressCallback
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
    crf: int = 18  # x264 quality (0 lossless, 18 visually transparent)
    preset: str = "medium"  # x264 speed / size trade-off (ultrafast .. veryslow); the same picture quality at a crf
    encoder: str = "auto"  # auto (h264_nvenc with CUDA and an FFmpeg that has it, else libx264) | libx264 | h264_nvenc
    pipelined: bool = True  # read ahead and encode behind the networks (False: one step after another, same frames)
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
                use_depth: bool = True, blend: str = "parsing", channels_last: bool = False,
                compile: bool = False) -> PipelineModels:
    """Load every model the job needs from the official layout of ``store``; a missing file is a clear error.

    ``dtype``: the VAE and UNet's compute dtype (default float16 on CUDA, float32 elsewhere; bfloat16 works too);
    ``channels_last`` / ``compile``: see :func:`joygen_core.edit.models.optimize_edit_models`."""
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
                            edit=load_edit_models(paths["joygen_unet"], paths["vae"], device, dtype,
                                                  channels_last=channels_last, compile=compile),
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


def _heartbeat(folder: Path, progress: ProgressCallback | None, every: float = 60.0) -> ProgressCallback:
    """``progress`` that also touches ``folder`` once a minute: a build in progress never looks abandoned to the
    leftover sweep of another run, even while no file is written (face detection over a long video)."""
    last = [time.monotonic()]

    def report(stage: str, done: int, total: int, preview: Preview | None = None) -> None:
        now = time.monotonic()
        if now - last[0] > every:
            last[0] = now
            with contextlib.suppress(OSError):
                os.utime(folder)
        if progress is not None:
            progress(stage, done, total, preview=preview)

    return report


def _build_cache(folder: Path, video: Path, models: PipelineModels, options: LipSyncOptions,
                 progress: ProgressCallback | None) -> None:
    """Stage 1 over the whole video, chunk by chunk, into ``folder`` (built aside, renamed when complete).

    Progress (and so an interrupt) once per ``options.batch_size`` frames, in both passes."""
    from safetensors.torch import save_file

    from .edit import editor
    from .face.track import FaceTrack
    from .morphable.reconstruct import detect_all, overlay_preview, reconstruct, smooth_detections
    from .video.io import iter_frames, probe_video

    info = probe_video(video)
    tmp = VideoCache(folder).partial_folder()
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    progress = _heartbeat(tmp, progress)
    bs = max(int(options.batch_size), 1)
    total = info.frame_count
    try:
        recon, edit = models.recon, models.edit
        # Faces of the whole video first (small), so tracking and smoothing see across chunk borders.
        det = detect_all(trimmed(iter_frames(video, chunk_size=options.chunk_frames)), recon.detector,
                         options.face_policy, batch_size=bs,
                         progress=lambda d, t: progress("faces", d, max(total, d)))
        if options.smooth:
            det = smooth_detections(det, float(info.fps))
        tracks, done = [], 0
        ref_lat = None
        for k, chunk in enumerate(iter_frames(video, chunk_size=options.chunk_frames)):
            frames = torch.from_numpy(chunk)
            n = frames.shape[0]
            masked = torch.zeros(n, 4, 32, 32)
            reference = torch.zeros(n, 4, 32, 32)
            masks = np.zeros((n, *frames.shape[1:3]), np.uint8)
            for b in range(0, n, bs):
                fb = frames[b:b + bs]
                nb = fb.shape[0]
                track = reconstruct(fb, recon.detector, recon.regressor, recon.bfm, batch_size=bs,
                                    policy=options.face_policy, smooth=options.smooth, fps=float(info.fps),
                                    detections=det.slice(done + b, done + b + nb))
                idx = track.detected.nonzero().squeeze(1)
                if idx.numel():
                    at = idx + b
                    crops = editor.face_crops(fb[idx], track.box[idx])
                    masked[at], reference[at] = editor.reference_latents(edit, crops, bs)
                    m = editor.blend_masks_for(fb[idx], track.box[idx], track.lm68[idx], options.blend, models.parser)
                    masks[at.numpy()] = (m.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                tracks.append(track)
                progress("video", done + b + nb, max(total, done + b + nb), preview=overlay_preview(fb, track))
            save_file({"masked": masked.half(), "reference": reference.half()},
                      str(tmp / f"latents_{k:05d}.safetensors"))
            np.savez_compressed(tmp / f"masks_{k:05d}.npz", masks=masks)
            done += n
            del frames, masks
            trim_heap()
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
                       n_out: int, options: LipSyncOptions, progress: ProgressCallback | None = None
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
        block = reader.read(start, stop)  # a fresh array each call
        parts.append(block[::-1] if desc else block)
    if len(parts) == 1 and parts[0].flags.c_contiguous:  # one forward run: the reader's array as it is
        return torch.from_numpy(parts[0])
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))


@dataclass
class _Batch:
    """One batch of output frames on its way from the reader, through the networks, to the encoder."""

    start: int  # position of the first frame in the output
    frames: torch.Tensor  # uint8 [n,H,W,3] source frames (CPU), pasted in place
    sel: torch.Tensor  # rows with a face
    boxes: torch.Tensor | None = None  # [m,4] face boxes of those rows
    masks: torch.Tensor | None = None  # uint8 [m,H,W] cached blend masks
    masked: torch.Tensor | None = None  # [m,4,32,32] cached latents (pinned when the device is CUDA)
    reference: torch.Tensor | None = None
    mouth: torch.Tensor | None = None  # uint8 [m,256,256] mouth depth (None: audio-only)
    audio: torch.Tensor | None = None  # [m,50,384] audio features
    faces: torch.Tensor | None = None  # uint8 [m,256,256,3] edited faces on the host (after the networks)
    ready: object | None = None  # CUDA event: the faces' copy to the host is complete


class _EditStage:
    """The edit pass as three stages for :func:`joygen_core.engine.run_stages`: ``source`` (decode, cache reads,
    mouth depth raster, audio features), ``work`` (the networks, on the caller's thread, with the progress
    reports) and ``sink`` (paste, then the encoder). ``seconds`` sums each stage's busy time."""

    def __init__(self, *, video: Path, index: torch.Tensor, track, cache: VideoCache, chunk_len: int,
                 states: torch.Tensor, windows: torch.Tensor, exp: torch.Tensor | None, fixed_ref: torch.Tensor | None,
                 models: PipelineModels, options: LipSyncOptions, progress: ProgressCallback | None):
        from .edit import editor

        self.video, self.index, self.track, self.cache, self.chunk_len = video, index, track, cache, chunk_len
        self.states, self.windows, self.exp, self.fixed_ref = states, windows, exp, fixed_ref
        self.models, self.options, self.progress = models, options, progress
        self.n_out = int(index.numel())
        self.batch = max(int(options.batch_size), 1)
        edit = models.edit
        self.cuda = torch.device(edit.device).type == "cuda"
        self.black = None
        if not options.use_depth:  # one latent for every frame, kept on the device
            self.black = editor.black_depth_latent(edit).to(edit.device, edit.dtype)
        self.done = 0
        self.frames_with_face = 0
        self.seconds = {k: 0.0 for k in ("decode", "cache reads", "depth raster", "audio features", "networks",
                                         "paste", "encode")}

    # ---------------------------------------------------------------- reader side

    def _host(self, t: torch.Tensor) -> torch.Tensor:
        """Page-locked when the networks run on CUDA: the upload is then asynchronous."""
        return t.pin_memory() if self.cuda else t

    def source(self) -> Iterator[_Batch]:
        from .render.depth import render_mouth_depth
        from .video.io import FrameReader

        bs, opt, sec = self.batch, self.options, self.seconds
        read_len = -(-max(opt.chunk_frames, 1) // bs) * bs  # a whole number of batches per read
        with FrameReader(self.video) as reader:
            # the first read is one batch, so the networks start at once; then whole chunks (few seeks back)
            starts = [0, *range(bs, self.n_out, read_len)] if self.n_out else []
            for a, a_next in zip(starts, [*starts[1:], self.n_out]):
                ts = time.perf_counter()
                chunk = _source_frames(reader, self.index[a:a_next])
                sec["decode"] += time.perf_counter() - ts
                for b in range(0, chunk.shape[0], bs):
                    at = a + b
                    src = self.index[at:at + bs]
                    sub = self.track.select(src)
                    sel = sub.detected.nonzero().squeeze(1)
                    item = _Batch(start=at, frames=chunk[b:b + bs], sel=sel)
                    if sel.numel():
                        ts = time.perf_counter()
                        masked, ref, masks = self.cache.gather(src[sel], self.chunk_len)
                        if self.fixed_ref is not None:
                            ref = self.fixed_ref.expand(sel.numel(), -1, -1, -1)
                        item.masked, item.reference = self._host(masked), self._host(ref.contiguous())
                        item.masks, item.boxes = masks, sub.box[sel]
                        t2 = time.perf_counter()
                        sec["cache reads"] += t2 - ts
                        if opt.use_depth:
                            mouth, _ = render_mouth_depth(sub.select(sel), self.exp[at:at + bs][sel],
                                                          self.models.recon.bfm, opt.raster_backend, preview=False,
                                                          batch_size=bs)
                            # the depth node's 0..1 maps as the official uint8 image (editor.depth_latents)
                            item.mouth = self._host((mouth.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
                        t3 = time.perf_counter()
                        sec["depth raster"] += t3 - t2
                        item.audio = self._host(_features(self.states, self.windows[at:at + bs][sel]))
                        sec["audio features"] += time.perf_counter() - t3
                    yield item
                del chunk
                trim_heap()

    # ---------------------------------------------------------------- the caller's thread

    def work(self, item: _Batch) -> _Batch:
        """The networks on one batch, then its progress report (which may raise: the run then stops)."""
        from .edit import editor

        ts = time.perf_counter()
        edit = self.models.edit
        if item.sel.numel():
            self.frames_with_face += int(item.sel.numel())
            if self.black is not None:
                depth = self.black
            else:
                mouth = item.mouth.to(edit.device, non_blocking=True)
                depth = editor.encode_on_device(edit, editor.to_vae_input(mouth))
            faces = editor.edit_batch(edit, item.masked, item.reference, depth, item.audio)
            if self.cuda:  # the copy back runs on the stream; the writer waits for it, not this thread
                host = torch.empty(faces.shape, dtype=faces.dtype, pin_memory=True)
                host.copy_(faces, non_blocking=True)
                item.ready = torch.cuda.Event()
                item.ready.record()
                item.faces = host
            else:
                item.faces = faces
        self.seconds["networks"] += time.perf_counter() - ts
        self.done += item.frames.shape[0]
        if self.progress is not None:
            self.progress("edit", self.done, self.n_out, preview=self._preview(item))
        return item

    @staticmethod
    def _preview(item: _Batch) -> Preview:
        """The latest edited face crop beside the mouth depth that drove it (the source frame without a face)."""

        def draw() -> np.ndarray:
            if item.faces is None:
                return item.frames[-1].numpy().copy()
            if item.ready is not None:
                item.ready.synchronize()
            face = item.faces[-1].numpy()
            if item.mouth is None:
                return face.copy()
            depth = np.repeat(item.mouth[-1].numpy()[..., None], 3, axis=-1)
            return np.concatenate([face, depth], axis=1)

        return draw

    # ---------------------------------------------------------------- writer side

    def pasted(self, items: Iterator[_Batch]) -> Iterator[np.ndarray]:
        """Frames for the encoder: the edited faces pasted back through the cached blend masks."""
        from .edit.blend import paste_faces

        while True:
            tw = time.perf_counter()
            item = next(items, None)
            ts = time.perf_counter()
            self.seconds["encode"] -= ts - tw  # waiting for the networks is not encoding
            if item is None:
                return
            if item.faces is not None:
                if item.ready is not None:
                    item.ready.synchronize()
                sel = item.sel
                if sel.numel() == item.frames.shape[0]:  # every frame has a face: paste in place, no copies
                    paste_faces(item.frames, item.faces, item.boxes, item.masks, out=item.frames)
                else:
                    item.frames[sel] = paste_faces(item.frames[sel], item.faces, item.boxes, item.masks)
            frames = item.frames.numpy()
            self.seconds["paste"] += time.perf_counter() - ts
            yield frames

    def sink(self, write: Callable[[Iterator[np.ndarray]], Path]) -> Callable[[Iterator[_Batch]], Path]:
        """``write(frames)`` (the encoder) over the pasted frames; its busy time is the encode seconds."""

        def run(items: Iterator[_Batch]) -> Path:
            ts = time.perf_counter()
            try:
                return write(self.pasted(items))
            finally:
                self.seconds["encode"] += time.perf_counter() - ts - self.seconds["paste"]

        return run


def _worker_threads() -> int:
    """torch threads of the pipelined engine's reader and writer: half the intra-op pool (one on a 2-core machine),
    so their OpenMP teams and the codecs' threads do not crowd out the networks on the caller's thread."""
    return max(1, torch.get_num_threads() // 2)


def _write_video_kwargs(write_video, options: LipSyncOptions) -> dict:
    """Encoder settings for ``write_video``: crf and preset, and the encoder where this version accepts it."""
    import inspect

    kw = {"crf": options.crf, "preset": options.preset}
    if "encoder" in inspect.signature(write_video).parameters:
        kw["encoder"] = options.encoder
    elif options.encoder not in ("auto", "libx264"):
        log.warning("This joygen_core.video.io.write_video has no encoder choice: using libx264.")
    return kw


def lip_sync(video: Path | str, audio: Path | str | AudioClip, out: Path | str, models: PipelineModels,
             options: LipSyncOptions | None = None, *, cache_root: Path | str | None = None,
             overwrite: bool = False, progress: ProgressCallback | None = None,
             cache_max_gb: float | None = None) -> LipSyncReport:
    """Edit ``video`` so its lips follow ``audio``; write ``out`` (H.264 + AAC, the driving audio, the video's fps).

    ``audio`` may be an audio file, a video with sound, or a decoded ``AudioClip``. ``cache_root``: where
    per-video caches live (:func:`joygen_core.cache.default_cache_dir` is the usual place; None, or a folder that
    cannot be written, means a temporary cache deleted afterwards); after the run the least recently used entries
    are evicted down to ``cache_max_gb`` (None: ``$JOYGEN_CACHE_MAX_GB`` or 20 GB).

    ``progress(stage, done, total, preview=None)`` (:class:`joygen_core.progress.ProgressCallback`) is called on
    this thread once per ``options.batch_size`` frames of each stage (faces / video / audio / edit); ``preview``
    builds, when called, the 3DMM overlay of the latest frame (video) or the latest edited face beside its mouth
    depth (edit). When it raises (an interrupt), the run stops within a batch and the exception propagates: no
    output, no partial cache. The output's folder is checked before any work, and the output appears only when
    complete. With ``options.pipelined`` the edit pass reads ahead and encodes behind the networks
    (:mod:`joygen_core.engine`); the frames written are the same as without.
    """
    import tempfile

    from .audio.prepare import finite_audio, to_mono_16k, to_motion_16k
    from .engine import run_stages
    from .video.io import probe_video, read_audio, write_video
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

        fixed_ref = None
        if options.reference_frame >= 0:
            from safetensors.torch import load_file

            fixed_ref = load_file(str(cache.folder / "fixed_reference.safetensors"))["reference"].float()
        stage = _EditStage(video=video, index=index, track=track, cache=cache, chunk_len=chunk_len, states=states,
                           windows=windows, exp=exp, fixed_ref=fixed_ref, models=models, options=options,
                           progress=progress)
        kw = _write_video_kwargs(write_video, options)

        def write(frames: Iterator[np.ndarray]) -> Path:
            return write_video(out, frames, fps=info.fps, audio=clip, overwrite=overwrite, **kw)

        t2 = time.perf_counter()
        run_stages(stage.source(), stage.work, stage.sink(write), pipelined=options.pipelined, depth=2,
                   name="joygen-edit", worker_threads=_worker_threads())
        report.frames_with_face = stage.frames_with_face
        report.seconds["edit pass (wall)"] = time.perf_counter() - t2
        report.seconds.update({f"edit: {k}": v for k, v in stage.seconds.items()})
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
