"""The one place that touches ComfyUI services, with plain fallbacks when ComfyUI is absent.

folder_paths (the ``joygen`` model folder), ProgressBar, model_management devices / interruption,
and the output / temp folders. Node modules call these helpers and never import ComfyUI themselves.
"""

from __future__ import annotations

import logging
import os
import types
from pathlib import Path
from typing import Any

import torch

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


class Progress:
    """ComfyUI's ProgressBar when present, else a tqdm bar; also polls for interruption."""

    def __init__(self, total: int, desc: str = "JoyGen"):
        self.total = max(int(total), 1)
        self._bar: Any
        if comfy_utils is not None:
            self._bar = comfy_utils.ProgressBar(self.total)
            self._tqdm = None
        else:
            from tqdm.auto import tqdm

            self._bar = None
            self._tqdm = tqdm(total=self.total, desc=desc, leave=False, disable=None)

    def update(self, n: int = 1) -> None:
        check_interrupt()
        if self._bar is not None:
            self._bar.update(n)
        elif self._tqdm is not None:
            self._tqdm.update(n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def __call__(self, done: int, total: int) -> None:
        """Callback form used by library functions: ``progress(done, total)``."""
        check_interrupt()
        if self._bar is not None:
            self._bar.update_absolute(done, total)
        elif self._tqdm is not None:
            self._tqdm.total = total
            self._tqdm.n = done
            self._tqdm.refresh()


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
    """Stand-in for ComfyUI's VideoFromFile when ComfyUI is absent: a video file with the same basic methods."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def get_stream_source(self) -> str:
        return self.path

    def save_to(self, path: str, **_: Any) -> None:
        import shutil

        shutil.copyfile(self.path, path)

    def get_components(self):
        from ..joygen_core.video.convert import audio_to_comfy, uint8_to_image
        from ..joygen_core.video.io import probe_video, read_audio, read_frames

        info = probe_video(self.path)
        audio = audio_to_comfy(read_audio(self.path)) if info.has_audio else None
        return types.SimpleNamespace(images=uint8_to_image(read_frames(self.path)), audio=audio, frame_rate=info.fps)


def video_from_file(path: str | Path):
    """A ComfyUI VIDEO value for a file (VideoFromFile), or the stand-in outside ComfyUI."""
    try:
        from comfy_api.input_impl import VideoFromFile  # type: ignore[import-not-found]
    except ImportError:
        return FileVideo(path)
    return VideoFromFile(str(path))


def video_path(video: Any, folder: Path) -> Path:
    """The file behind a VIDEO value; in-memory videos (BytesIO, components) are saved into ``folder`` first."""
    source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        return Path(source)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"joygen_input_{os.getpid()}_{id(video)}.mp4"
    video.save_to(str(out))
    return out
