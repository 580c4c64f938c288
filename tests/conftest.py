"""Shared fixtures: the pack imported as a package, real-face clips, synthesised speech, a models folder.

All offline and deterministic. Media fixtures are made once per session in a temp folder.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from joygen_core.demo import SAMPLE_CLIP

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "joygen_pack"


class _LibraryAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Make ``joygen_pack.joygen_core.X`` the very same module object as ``joygen_core.X``.

    ComfyUI imports the library through the pack (relative imports in nodes/); tests import it as
    ``joygen_core``. One module object per file keeps classes identical on both paths.
    """

    prefix = PACK_NAME + ".joygen_core"

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.prefix or fullname.startswith(self.prefix + "."):
            real = importlib.import_module(fullname[len(PACK_NAME) + 1:])
            return importlib.util.spec_from_loader(fullname, self, is_package=hasattr(real, "__path__"))
        return None

    def create_module(self, spec):
        module = importlib.import_module(spec.name[len(PACK_NAME) + 1:])
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._real_spec  # importlib overwrote it with the alias spec


def _import_pack():
    """Import the repository root as the package ComfyUI would load (relative imports in nodes/)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    if not any(isinstance(f, _LibraryAlias) for f in sys.meta_path):
        sys.meta_path.insert(0, _LibraryAlias())
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Runs that use the default per-video cache write into a temp folder, never the user's ~/.cache/joygen."""
    import os

    old = os.environ.get("JOYGEN_CACHE")
    os.environ["JOYGEN_CACHE"] = str(tmp_path_factory.mktemp("joygen_cache"))
    yield
    if old is None:
        os.environ.pop("JOYGEN_CACHE", None)
    else:
        os.environ["JOYGEN_CACHE"] = old


@pytest.fixture(scope="session")
def pack():
    """The node pack as ComfyUI imports it (``joygen_pack.nodes...``)."""
    return _import_pack()


# ---------------------------------------------------------------- real faces


def _template_webp(name: str) -> Path:
    """A clip of comfyui-workflow-templates-media-video: a missing package or clip fails, never skips."""
    from joygen_core.demo import template_clip

    return template_clip(name)


def webp_frames(name: str = SAMPLE_CLIP, max_frames: int | None = None) -> np.ndarray:
    """Frames of an animated WebP of a real-looking talking person, uint8 [T,H,W,3]."""
    from PIL import Image, ImageSequence

    img = Image.open(_template_webp(name))
    frames = []
    for i, frame in enumerate(ImageSequence.Iterator(img)):
        if max_frames is not None and i >= max_frames:
            break
        frames.append(np.asarray(frame.convert("RGB")))
    return np.stack(frames)


@pytest.fixture(scope="session")
def face_frames() -> np.ndarray:
    """A real-looking man singing to a guitar, one face, uint8 [69,350,350,3]."""
    return webp_frames()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


# ---------------------------------------------------------------- speech


def synth_speech(path: Path, text: str = "Hello, this is a test of the lip sync pipeline.") -> Path:
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """A few seconds of synthesised English speech (22.05 kHz mono WAV from espeak-ng)."""
    return synth_speech(tmp_path_factory.mktemp("speech") / "speech.wav")


@pytest.fixture(scope="session")
def face_video(tmp_path_factory, face_frames, speech_wav) -> Path:
    """A real MP4 (H.264 + AAC, 25 fps) of the talking face with the speech as its audio."""
    from joygen_core.video.io import read_audio, write_video

    audio = read_audio(speech_wav)
    out = tmp_path_factory.mktemp("video") / "face.mp4"
    write_video(out, iter([face_frames]), fps=25.0, audio=audio)
    return out


# ---------------------------------------------------------------- models


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A models folder in the official layout with small random weights (every family the factory knows)."""
    from factory import make_models_folder

    return make_models_folder(tmp_path_factory.mktemp("models") / "joygen")
