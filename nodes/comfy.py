"""The one place that touches ComfyUI services, with plain fallbacks when ComfyUI is absent.

folder_paths (the ``joygen`` model folder), ProgressBar, model_management devices / interruption,
and the output / temp folders. Node modules call these helpers and never import ComfyUI themselves.
"""

from __future__ import annotations

import io
import logging
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..joygen_core.progress import JobProgress, Preview, format_seconds
from ..joygen_core.weights import ModelStore, default_model_dirs

log = logging.getLogger(__name__)

MODEL_FOLDER = "joygen"

try:  # ComfyUI present
    import folder_paths  # type: ignore[import-not-found]
except ImportError:  # standalone / tests
    folder_paths = None

try:
    import comfy.model_management as model_management  # type: ignore[import-not-found]
    import comfy.utils as comfy_utils  # type: ignore[import-not-found]
except ImportError:
    model_management = None
    comfy_utils = None


def in_comfyui() -> bool:
    return folder_paths is not None


def register_model_folder() -> None:
    """Register ``models/joygen`` with folder_paths (extra_model_paths.yaml entries named joygen add to it)."""
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    known = folder_paths.folder_names_and_paths.get(MODEL_FOLDER)
    if known is None:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([default], set())
    elif default not in known[0]:
        known[0].insert(0, default)
    os.makedirs(default, exist_ok=True)


def model_store() -> ModelStore:
    """The model folder(s): ComfyUI's ``joygen`` paths, else ``$JOYGEN_MODELS`` / ./models/joygen."""
    if folder_paths is not None:
        return ModelStore(folder_paths.get_folder_paths(MODEL_FOLDER))
    return ModelStore(default_model_dirs())


def choices(names: list[str], placeholder: str) -> list[str]:
    """Drop-down values; a single explanatory placeholder when the folder is empty."""
    return names if names else [placeholder]


def pick(names: list[str], preferred: str) -> str:
    """The drop-down default: the official file name when present, else the first choice."""
    return preferred if preferred in names else names[0]


def torch_device(name: str = "auto") -> torch.device:
    """'auto' -> ComfyUI's torch device, else CUDA / MPS / CPU; or an explicit device string."""
    if name and name != "auto":
        return torch.device(name)
    if model_management is not None:
        return model_management.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def offload_device() -> torch.device:
    if model_management is not None:
        return model_management.unet_offload_device()
    return torch.device("cpu")


def free_memory(device: torch.device, amount: int = 0) -> None:
    """Ask ComfyUI to unload its models before a large job; a no-op standalone."""
    if model_management is not None and amount:
        model_management.free_memory(amount, device)


def check_interrupt() -> None:
    """Raise ComfyUI's interruption exception when the user pressed cancel."""
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


# ---------------------------------------------------------------- devices


def devices() -> list[str]:
    """The device menu: auto and cpu always, then only what torch finds here (cuda, cuda:N with several GPUs, mps)."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names += ["cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def device_check(device: str) -> bool | str:
    """ComfyUI's VALIDATE_INPUTS answer for a device menu value: True, or why it cannot run here.

    ComfyUI checks a combo value against the list the node offers now, so a workflow saved on a GPU machine with
    ``cuda`` would fail on a CPU machine with a bare "not in list"; the loaders check the value themselves (a node
    with VALIDATE_INPUTS for an input skips ComfyUI's list check) and name the fix."""
    present = devices()
    if device in present:
        return True
    return (f"device {device!r} is not available on this machine (present: {', '.join(present)}); pick auto, "
            "which uses ComfyUI's device")


class DeviceMenu:
    """Mixin of the loaders: their ``device`` menu is checked against this machine's devices, with a clear error."""

    @classmethod
    def VALIDATE_INPUTS(cls, device="auto"):
        return device_check(device)


# ---------------------------------------------------------------- progress, previews, interruption


def _preview_size() -> int:
    """ComfyUI's --preview-size (the samplers' latent previews), 512 by default."""
    try:
        from comfy.cli_args import args  # type: ignore[import-not-found]

        return int(args.preview_size)
    except (ImportError, AttributeError, TypeError, ValueError):
        return 512


def _node_id() -> str | None:
    """The id of the node ComfyUI is executing (for its progress text), None outside ComfyUI."""
    try:
        from comfy_execution.utils import get_executing_context  # type: ignore[import-not-found]
    except ImportError:
        return None
    context = get_executing_context()
    return None if context is None else str(context.node_id)


def _send_text(text: str, node_id: str | None) -> None:
    """Show ``text`` under the running node (PromptServer.send_progress_text, ComfyUI 0.3.4x and later)."""
    if node_id is None:
        return
    try:
        from server import PromptServer  # type: ignore[import-not-found]

        server = PromptServer.instance
        server.send_progress_text(text, node_id)
    except (ImportError, AttributeError):
        pass


class ComfyProgress(JobProgress):
    """One progress bar over a whole job in ComfyUI: the weighted stages of :class:`JobProgress` folded into one
    ComfyUI ProgressBar, the stage named under the node, and live previews sent the way samplers send latent
    previews (``("JPEG", PIL image, --preview-size)``). Interruption is checked at every report (raises ComfyUI's
    InterruptProcessingException, so the library stops between batches). Outside ComfyUI: a tqdm bar, no previews.

    Call it as the library's ``progress(stage, done, total, preview=None)``, or take :meth:`for_stage` for library
    functions that report ``progress(done, total)``.
    """

    STEPS = 1000  # the bar's resolution: ComfyUI shows value / max

    def __init__(self, weights: dict[str, float] | None = None, *, desc: str = "JoyGen", text_every: float = 0.5,
                 **kw):
        super().__init__(weights, **kw)
        self.desc = desc
        self.text_every = text_every
        self.node_id = _node_id()
        self._bar: Any = comfy_utils.ProgressBar(self.STEPS, node_id=self.node_id) if comfy_utils is not None \
            else None
        self._tqdm: Any = None
        if self._bar is None:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.STEPS, desc=desc, leave=False, disable=None,
                              bar_format="{l_bar}{bar}| {postfix}")
        self._text: tuple[str | None, float] = (None, -float("inf"))
        self.shown = 0  # reports shown (one websocket progress message each in ComfyUI)
        self.last_image: np.ndarray | None = None  # the latest preview built

    def __call__(self, stage: str, done: int, total: int, preview: Preview | None = None) -> None:
        check_interrupt()
        super().__call__(stage, done, total, preview)

    def for_stage(self, name: str) -> Callable[..., None]:
        """``progress(done, total, preview=None)`` for one stage, the form most library functions take."""
        return lambda done, total, preview=None: self(name, done, total, preview)

    def wants_previews(self) -> bool:
        return self._bar is not None

    def show(self, preview: np.ndarray | None) -> None:
        self.shown += 1
        value = int(round(self.fraction * self.STEPS))
        if preview is not None:
            self.last_image = preview
        if self._bar is not None:
            self._show_text()  # first, so the stage named under the node is the one this progress message is about
            image = None
            if preview is not None:
                from PIL import Image

                image = ("JPEG", Image.fromarray(np.ascontiguousarray(preview)), _preview_size())
            self._bar.update_absolute(value, self.STEPS, image)
        elif self._tqdm is not None:
            self._tqdm.n = value
            self._tqdm.set_postfix_str(self.line(), refresh=True)

    def line(self) -> str:
        eta = self.eta
        return (f"{self.label}: {self.done}/{self.total}, {100 * self.fraction:.0f}%"
                + (f", ETA {format_seconds(eta)}" if eta is not None else ""))

    def _show_text(self) -> None:
        now = self.clock()
        stage, at = self._text
        if stage == self.stage and now - at < self.text_every and self.done < self.total:
            return
        self._text = (self.stage, now)
        _send_text(self.line(), self.node_id)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


def stage_progress(stage: str, desc: str = "JoyGen") -> ComfyProgress:
    """A bar for one composable node's single stage."""
    return ComfyProgress({stage: 1.0}, desc=desc)


# ---------------------------------------------------------------- images shown in the node


def _pick(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``n`` (all when fewer)."""
    if n <= count:
        return list(range(n))
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


def ui_images(images: Any, prefix: str = "JoyGen", count: int = 4, max_side: int = 512) -> list[dict]:
    """Save a few of ``images`` (IMAGE [B,H,W,C] floats or uint8 [B,H,W,3]) as ComfyUI's PreviewImage does (PNG in
    the temp folder, type "temp") and return the entries of a node's ``{"ui": {"images": ...}}``; ``count``
    evenly spaced frames at most ``max_side`` pixels on a side. Outside ComfyUI nothing is saved."""
    if folder_paths is None or images is None or len(images) == 0:
        return []
    import random

    from PIL import Image

    temp = folder_paths.get_temp_directory()
    tag = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
    out = []
    for k in _pick(len(images), count):
        frame = images[k]
        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu()
            frame = (frame.float().clamp(0, 1) * 255).round().to(torch.uint8) if frame.is_floating_point() else frame
            frame = frame.numpy()
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[-1] == 1:
            frame = frame[..., 0]
        image = Image.fromarray(np.ascontiguousarray(frame[..., :3] if frame.ndim == 3 else frame))
        image.thumbnail((max_side, max_side))
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(f"{prefix}_temp_{tag}", temp,
                                                                               image.width, image.height)
        file = f"{name}_{counter:05}_.png"
        image.save(os.path.join(folder, file), compress_level=1)
        out.append({"filename": file, "subfolder": subfolder, "type": "temp"})
    return out


def with_ui(result: tuple, images: Any, prefix: str = "JoyGen", count: int = 4) -> dict:
    """A node's return value that also shows ``images`` in the node: ``{"ui": {"images": [...]}, "result": ...}``."""
    return {"ui": {"images": ui_images(images, prefix, count)}, "result": tuple(result)}


# ---------------------------------------------------------------- folders


def output_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return Path("output").resolve()


def temp_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_temp_directory())
    return Path("temp").resolve()


def cache_dir() -> Path:
    """Where the per-video cache lives, kept across restarts: ``$JOYGEN_CACHE`` if set, else ``joygen_cache`` in
    ComfyUI's user folder (beside ``output/`` on a ComfyUI without one), never ComfyUI's temp folder, which it
    empties at every start; outside ComfyUI the library's default (the user cache folder)."""
    from ..joygen_core.cache import default_cache_dir

    if folder_paths is None or os.environ.get("JOYGEN_CACHE"):
        return default_cache_dir()
    if hasattr(folder_paths, "get_user_directory"):
        return Path(folder_paths.get_user_directory()) / "joygen_cache"
    return Path(folder_paths.get_output_directory()).parent / "joygen_cache"


class FileVideo:
    """Stand-in for ComfyUI's VideoFromFile when ComfyUI is absent: a video file, or its bytes (a BytesIO), with the
    same basic methods."""

    def __init__(self, source: str | Path | io.BytesIO):
        self.source = source if isinstance(source, io.BytesIO) else str(source)

    def get_stream_source(self) -> str | io.BytesIO:
        if isinstance(self.source, io.BytesIO):
            self.source.seek(0)
        return self.source

    def save_to(self, path: str, **_: Any) -> None:
        import shutil

        if isinstance(self.source, io.BytesIO):
            Path(path).write_bytes(self.source.getvalue())
        else:
            shutil.copyfile(self.source, path)

    def get_components(self):
        import tempfile

        from ..joygen_core.video.convert import audio_to_comfy, uint8_to_image
        from ..joygen_core.video.io import probe_video, read_audio, read_frames

        with tempfile.TemporaryDirectory(prefix="joygen_video_") as tmp:
            path = self.source
            if isinstance(path, io.BytesIO):
                path = str(Path(tmp) / "video.mp4")
                self.save_to(path)
            info = probe_video(path)
            audio = audio_to_comfy(read_audio(path)) if info.has_audio else None
            images = uint8_to_image(read_frames(path))
        return types.SimpleNamespace(images=images, audio=audio, frame_rate=info.fps)


def video_in_memory(path: str | Path):
    """A VIDEO value holding the file's bytes (ComfyUI's VideoFromFile over a BytesIO, 0.3.4x and later), so the file
    can be deleted at once: nothing of ours stays in temp/ after a run."""
    data = io.BytesIO(Path(path).read_bytes())
    try:
        from comfy_api.input_impl import VideoFromFile  # type: ignore[import-not-found]
    except ImportError:
        return FileVideo(data)
    return VideoFromFile(data)


def video_path(video: Any, folder: Path) -> Path:
    """The file behind a VIDEO value; in-memory videos (BytesIO, components) are saved into ``folder`` first."""
    source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        return Path(source)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"joygen_input_{os.getpid()}_{id(video)}.mp4"
    video.save_to(str(out))
    return out


def stereo_like_create_video(clip):
    """The AudioClip as ComfyUI's CreateVideo / SaveVideo write a track: stereo AAC whatever the input (a mono
    track is doubled, as PyAV's default stereo layout does; more channels are left to the writer's stereo downmix).
    The models hear the same signal: their mono mix of two equal channels is the mono input."""
    from ..joygen_core.video.io import AudioClip

    if clip.waveform.shape[0] != 1:
        return clip
    return AudioClip(clip.waveform.expand(2, -1).contiguous(), clip.sample_rate)


def sample_frames(path: str | Path, count: int) -> np.ndarray | None:
    """``count`` frames spread over a video file (uint8 [n,H,W,3]), decoded in one streamed pass (node display)."""
    from ..joygen_core.video.io import iter_frames, probe_video

    n = probe_video(path).frame_count
    want = set(_pick(n, count))
    kept, i = [], 0
    for chunk in iter_frames(path, chunk_size=32):
        kept += [chunk[k] for k in range(len(chunk)) if i + k in want]
        i += len(chunk)
        if len(kept) >= len(want):
            break
    return np.stack(kept) if kept else None
