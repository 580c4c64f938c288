"""The weight store: which files the official bundle holds, where to find them, how to load them safely.

Every loader in the library goes through :func:`resolve` (a name -> a file inside a model folder)
and :func:`load_checkpoint` (a file -> tensors, never executing pickled code).
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from .errors import ModelFileError, UnsafePathError

log = logging.getLogger(__name__)

ENV_VAR = "JOYGEN_MODELS"
BUNDLE_URL = "the official pretrained_models bundle linked from github.com/JOY-MM/JoyGen (Download pretrained weights)"


@dataclass(frozen=True)
class ModelFile:
    """One file (or folder) of the official ``pretrained_models`` bundle."""

    key: str
    path: str
    purpose: str
    source: str
    folder: bool = False
    optional: bool = False


MANIFEST: tuple[ModelFile, ...] = (
    ModelFile("bfm", "BFM/BFM_model_front.mat", "Basel Face Model, front part + expression basis",
              BUNDLE_URL + "; or built from BFM09 + Exp_Pca.bin (Deep3DFaceRecon_pytorch README)"),
    ModelFile("bfm_mp468", "BFM/index_mp468_from_mesh35709.npy", "468 MediaPipe-topology points as BFM vertex ids",
              BUNDLE_URL),
    ModelFile("bfm09", "BFM/01_MorphableModel.mat", "BFM09 source (only to build BFM_model_front.mat)",
              "faces.dmi.unibas.ch (registration)", optional=True),
    ModelFile("bfm_exp_pca", "BFM/Exp_Pca.bin", "expression basis source (only to build BFM_model_front.mat)",
              "Deep3DFaceRecon_pytorch instructions", optional=True),
    ModelFile("face_recon", "face_recon_feat0.2_augment/epoch_20.pth", "Deep3DFaceRecon coefficient regressor",
              BUNDLE_URL + "; or github.com/sicxu/Deep3DFaceRecon_pytorch (prerequisite models)"),
    ModelFile("a2m_config", "audio2motion/240210_real3dportrait_orig/audio2secc_vae/config.yaml",
              "audio-to-motion config", BUNDLE_URL + "; or github.com/yerfor/Real3DPortrait checkpoints"),
    ModelFile("a2m", "audio2motion/240210_real3dportrait_orig/audio2secc_vae/model_ckpt_steps_400000.ckpt",
              "audio-to-expression flow VAE", BUNDLE_URL + "; or github.com/yerfor/Real3DPortrait checkpoints"),
    ModelFile("hubert", "audio2motion/hubert", "HuBERT-large audio features for audio-to-motion",
              "huggingface.co/facebook/hubert-large-ls960-ft", folder=True),
    ModelFile("joygen_unet", "joygen", "the JoyGen editing UNet (diffusers folder)",
              BUNDLE_URL + " (the joygen folder is also linked on its own there)", folder=True),
    ModelFile("vae", "sd-vae-ft-mse", "image VAE (diffusers folder)", "huggingface.co/stabilityai/sd-vae-ft-mse",
              folder=True),
    ModelFile("whisper", "whisper/tiny.pt", "Whisper-tiny audio features for the editor (OpenAI format)",
              BUNDLE_URL + "; or OpenAI's published tiny.pt; or an HF openai/whisper-tiny folder"),
    ModelFile("face_parse", "face-parse-bisent/79999_iter.pth", "BiSeNet face parsing for blending",
              BUNDLE_URL + "; or github.com/zllrunning/face-parsing.PyTorch"),
    ModelFile("face_parse_backbone", "face-parse-bisent/resnet18-5c106cde.pth",
              "ResNet-18 backbone the BiSeNet file was trained from (not read at inference)",
              "download.pytorch.org/models/resnet18-5c106cde.pth", optional=True),
)

MANIFEST_BY_KEY = {m.key: m for m in MANIFEST}


def default_model_dirs() -> list[Path]:
    """The model folders of a standalone run: ``$JOYGEN_MODELS`` (os.pathsep-separated), else ``./models/joygen``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("models") / "joygen"]


def check_name(name: str) -> PurePosixPath:
    """A model name from a workflow or the command line as a plain relative path; UnsafePathError otherwise.

    Refused: empty names, absolute paths, drive letters and UNC paths, ``..`` parts, ``:`` (drive-relative and
    alternate-stream names on Windows) and NUL. Backslashes count as separators, so a Windows-style
    ``sub\\..\\x`` is judged like ``sub/../x``. Only the NAME is judged: symlinks inside the folder are the
    owner's choice and are followed.
    """
    norm = name.replace("\\", "/") if isinstance(name, str) else ""
    rel = PurePosixPath(norm)
    win = PureWindowsPath(name) if isinstance(name, str) else None
    if (not norm.strip() or "\x00" in norm or rel.is_absolute() or win is None or win.drive or win.root
            or any(part == ".." or ":" in part for part in rel.parts)):
        raise UnsafePathError(
            f"Model name {name!r} is not a plain relative path inside the joygen model folder; "
            "pick a file listed by the loader node instead."
        )
    return rel


def resolve_in(root: Path | str, name: str) -> Path:
    """``root / name`` for a checked name (:func:`check_name`), symlinks kept as they are.

    The path is not resolved: a file or folder the owner symlinked into the model folder (weights on another
    disk, the Hugging Face cache, a shared bundle) loads from wherever it points, under the name it has here
    (a cache blob has no ``.safetensors`` suffix of its own).
    """
    rel = check_name(name)
    return Path(root).expanduser().absolute().joinpath(*rel.parts)


class ModelStore:
    """The model folder(s) holding the official ``pretrained_models`` layout.

    Several roots are allowed (ComfyUI's ``models/joygen`` plus extra_model_paths.yaml entries);
    a name is looked up in each in order. Names are confined (:func:`check_name`); symlinks placed in a root
    are followed, as ComfyUI's own model folders do.
    """

    def __init__(self, roots: Sequence[Path | str] | Path | str | None = None):
        if roots is None:
            roots = default_model_dirs()
        elif isinstance(roots, (str, Path)):
            roots = [roots]
        self.roots = [Path(r).expanduser() for r in roots]

    def __repr__(self) -> str:
        return f"ModelStore({[str(r) for r in self.roots]})"

    def find(self, name: str) -> Path | None:
        """The first existing ``root/name`` (name checked, symlinks followed), or None."""
        for root in self.roots:
            target = resolve_in(root, name)
            if target.exists():
                return target
        return None

    def _broken_link(self, name: str) -> Path | None:
        """``root/name`` (or a folder on its way) that is a symlink to nothing, in the first root holding one."""
        parts = check_name(name).parts
        for root in self.roots:
            for depth in range(1, len(parts) + 1):
                p = resolve_in(root, "/".join(parts[:depth]))
                if p.is_symlink() and not p.exists():
                    return p
                if not p.exists():
                    break
        return None

    def path(self, key_or_name: str) -> Path:
        """The file for a manifest key or a relative name; a clear error when it is missing."""
        entry = MANIFEST_BY_KEY.get(key_or_name)
        name = entry.path if entry else key_or_name
        found = self.find(name)
        if found is not None:
            return found
        if not any(r.is_dir() for r in self.roots):
            raise ModelFileError(
                f"The JoyGen model folder does not exist (looked in: {', '.join(map(str, self.roots))}). "
                f"Create it (ComfyUI: models/joygen; standalone: --models DIR or ${ENV_VAR}) and put the "
                "official pretrained_models bundle inside."
            )
        where = entry.source if entry else BUNDLE_URL
        what = f" ({entry.purpose})" if entry else ""
        broken = self._broken_link(name)
        if broken is not None:
            raise ModelFileError(
                f"Model file {name!r}{what}: {broken} is a symlink to {os.readlink(broken)}, which does not exist. "
                f"Point the link at the file again (is its disk mounted?), or put the file there. Get it from: {where}."
            )
        raise ModelFileError(
            f"Missing model file {name!r}{what}. Expected at {self.roots[0] / name}. Get it from: {where}. "
            "Run `python -m joygen_core models` to see every expected file."
        )

    def list_files(self, suffixes: Iterable[str] = (), under: str = "") -> list[str]:
        """Relative names of files under the roots (for loader drop-downs), sorted.

        Symlinked files and folders are followed wherever they point (a link back to a folder it sits in is not
        walked again, so it cannot loop); hidden folders (``.git``, ``.cache``) are skipped.
        """
        suffixes = tuple(suffixes)
        names: set[str] = set()
        for root in self.roots:
            base = resolve_in(root, under) if under else Path(root).expanduser().absolute()
            if not base.is_dir():
                continue
            root_abs = Path(root).expanduser().absolute()
            ancestors: dict[str, frozenset[tuple[int, int]]] = {}  # folder -> the real folders above it, itself too
            for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
                try:
                    st = os.stat(dirpath)
                except OSError:
                    dirnames[:] = []
                    continue
                above = ancestors.get(os.path.dirname(dirpath), frozenset())
                if (st.st_dev, st.st_ino) in above:
                    dirnames[:] = []
                    continue
                ancestors[dirpath] = above | {(st.st_dev, st.st_ino)}
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in filenames:
                    p = Path(dirpath) / fname
                    if (not suffixes or fname.endswith(suffixes)) and p.is_file():
                        names.add(p.relative_to(root_abs).as_posix())
        return sorted(names)

    def list_folders(self, marker: str = "config.json") -> list[str]:
        """Relative names of folders holding ``marker`` (diffusers / transformers model folders)."""
        return sorted({str(Path(n).parent.as_posix()) for n in self.list_files((marker,)) if "/" in n}
                      | ({"."} if any((r / marker).is_file() for r in self.roots) else set()))

    def status(self) -> list[tuple[ModelFile, Path | None]]:
        return [(m, self.find(m.path)) for m in MANIFEST]


def format_status(store: ModelStore) -> str:
    """A plain-text table of every manifest entry: present / missing, and where to get it."""
    rows = [("status", "file", "purpose", "where to get it")]
    for entry, found in store.status():
        state = "present" if found else ("optional" if entry.optional else "MISSING")
        rows.append((state, entry.path + ("/" if entry.folder else ""), entry.purpose, entry.source))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"model folder(s): {', '.join(str(r) for r in store.roots)}"]
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    return "\n".join(lines)


def _numpy_safe_globals() -> list[Any]:
    """numpy's scalar / dtype reconstructors: they rebuild values and execute no code."""
    import numpy as np

    allowed: list[Any] = [np.dtype]
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed.append(scalar)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dt = getattr(getattr(np, "dtypes", None), name, None)
        if dt is not None:
            allowed.append(dt)
    return allowed


def load_checkpoint(path: Path | str, *, allow_numpy_scalars: bool = False) -> Any:
    """Load a weight file without executing pickled code.

    ``.safetensors`` -> a dict of tensors; anything else goes through ``torch.load(weights_only=True)``
    onto the CPU. A file that needs code execution to unpickle is refused, a truncated or corrupt
    file gets an error naming it. ``allow_numpy_scalars`` admits numpy scalars stored in training
    containers (the A2M checkpoint's best-validation value).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {path} does not exist.")
    if path.stat().st_size == 0:
        raise ModelFileError(f"Model file {path} is empty (0 bytes): download it again.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelFileError(
                f"Model file {path} is not a valid safetensors file ({exc}); download it again."
            ) from exc
    try:
        if allow_numpy_scalars:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "weights_only" in msg:
            raise ModelFileError(
                f"Refused to load {path}: unpickling it would execute code or import objects that are not "
                f"tensors ({msg.splitlines()[-1] if msg else exc!r}). Use the official file, or convert it to "
                "safetensors."
            ) from exc
        raise ModelFileError(f"Model file {path} is corrupt ({exc}); download it again.") from exc
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelFileError(f"Model file {path} is truncated or corrupt ({exc}); download it again.") from exc


def check_state_dict(
    state: dict[str, torch.Tensor], module: torch.nn.Module, file: Path | str, *, what: str
) -> None:
    """Raise a ModelFileError naming missing/unexpected keys and the first shape mismatches."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise ModelFileError(f"{file} is not a valid {what} checkpoint: " + "; ".join(parts) + ".")
