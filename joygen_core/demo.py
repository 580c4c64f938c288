"""``python -m joygen_core demo``: the whole job on a built-in sample.

The sample is a real-looking talking-face clip from the ``comfyui-workflow-templates-media-video`` package
and a sentence synthesised offline by espeak-ng. With the official weights in the model folder the demo
uses them; without, it writes small random-initialised models in the official formats (the test factory
of this repository) and says loudly that the lips will not follow the audio.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .errors import JoyGenError
from .weights import MANIFEST, ModelStore, default_model_dirs

log = logging.getLogger(__name__)

SAMPLE_CLIP = "video_wan2_2_14B_s2v-1.webp"
"""One talking (singing) face, 69 frames of 350x350; in every comfyui-workflow-templates-media-video from 0.3.30
(the version ComfyUI pins) to 0.3.101 at least, unlike video_wan2_1_infinitetalk-1.webp (0.3.41 on)."""
SAMPLE_TEXT = ("JoyGen edits the lips of an existing talking face video, so that they follow a new audio track. "
               "This is the built in demo.")
REPO = Path(__file__).resolve().parents[1]


def template_clip(name: str = SAMPLE_CLIP) -> Path:
    """The path of an animated WebP shipped by comfyui-workflow-templates-media-video."""
    try:
        import comfyui_workflow_templates_media_video as media
    except ImportError as exc:
        raise JoyGenError("The sample clip comes from the package comfyui-workflow-templates-media-video: "
                          "pip install 'comfyui-workflow-templates-media-video>=0.3.30'") from exc
    hits = sorted(Path(media.__file__).parent.rglob(name))
    if not hits:
        raise JoyGenError(f"{name} is missing from comfyui-workflow-templates-media-video "
                          f"{_version('comfyui-workflow-templates-media-video')}; reinstall it (>=0.3.30).")
    return hits[0]


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


def sample_video(folder: Path, fps: float = 25.0) -> Path:
    """The built-in clip as an MP4 in ``folder``."""
    import numpy as np
    from PIL import Image, ImageSequence

    from .video.io import write_video

    frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(template_clip()))])
    out = folder / "sample.mp4"
    write_video(out, iter([frames]), fps=fps, overwrite=True)
    return out


def sample_speech(folder: Path, text: str = SAMPLE_TEXT) -> Path:
    """A sentence synthesised by espeak-ng into ``folder``."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise JoyGenError("The demo speech is synthesised with espeak-ng: apt-get install espeak-ng "
                          "(or run `python -m joygen_core edit` with your own audio).")
    out = folder / "speech.wav"
    subprocess.run([exe, "-w", str(out), text], check=True, capture_output=True)
    return out


def official_weights_present(store: ModelStore) -> bool:
    return all(store.find(m.path) is not None for m in MANIFEST if not m.optional)


def untrained_models_folder(folder: Path) -> Path:
    """Small random models in the official layout, written by this repository's test factory."""
    tests = REPO / "tests"
    if not (tests / "factory").is_dir():
        raise JoyGenError("No official weights found and this installation has no tests/factory to make small "
                          "untrained ones: put the official bundle in the model folder (python -m joygen_core models).")
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    from factory import make_models_folder

    return make_models_folder(folder)


def run_demo(args: argparse.Namespace, options, device: torch.device, progress=None,
             dtype: torch.dtype | None = None):
    from .pipeline import lip_sync, load_models

    store = ModelStore([Path(args.models)] if args.models else default_model_dirs())
    work = Path(args.cache or Path("temp") / "joygen_demo")
    work.mkdir(parents=True, exist_ok=True)
    speech = sample_speech(work)  # first: without espeak-ng the demo stops before any other work
    video = sample_video(work)
    untrained = not official_weights_present(store)
    if untrained:
        log.warning("=" * 78)
        log.warning("NO OFFICIAL WEIGHTS in %s: running SMALL UNTRAINED RANDOM MODELS.",
                    ", ".join(map(str, store.roots)))
        log.warning("The pipeline runs end to end, but the lips will NOT follow the audio and the face")
        log.warning("will look wrong. Put the official bundle there (python -m joygen_core models).")
        log.warning("=" * 78)
        store = ModelStore(untrained_models_folder(work / "untrained_models"))
    models = load_models(store, device, dtype, use_depth=options.use_depth, blend=options.blend)
    models.untrained = untrained
    report = lip_sync(video, speech, args.out, models, options, cache_root=work / "cache",
                      overwrite=args.overwrite or args.out == "output/demo.mp4",
                      progress=progress)
    if untrained:
        log.warning("Demo done with UNTRAINED models: %s shows the plumbing, not JoyGen's quality.", args.out)
    return report
