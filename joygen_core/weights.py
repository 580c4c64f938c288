"""The weight store: which files the official bundle holds, where to find them, how to load them safely.

Every loader in the library goes through :func:`resolve` (a name -> a file inside a model folder)
and :func:`load_checkpoint` (a file -> tensors, never executing pickled code).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

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
    ModelFile("syncnet", "syncnet/syncnet_v2.model", "SyncNet v2 for lip-sync scores (LSE-D / LSE-C; not read to edit)",
              "joonson/syncnet_python download_model.sh (the SyncNet of Wav2Lip's evaluation)", optional=True),
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


# ----------------------------------------------------------------------------------------- damaged weight files
#
# One classifier for every loader (ours, transformers', diffusers'): an exception raised while reading a weight
# file becomes ONE ModelFileError naming the file, what is wrong with it and what to do. The file itself is
# inspected (safetensors header against the file size; zip directory; the pickle's opcodes, read without
# executing anything), so the verdict does not depend on the wording of a library's message.

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b")
_TORCH_GLOBAL = re.compile(r"GLOBAL (\S+?)(?: was not an allowed global| whose module|\s|$)")
_TORCH_PREFIX = re.compile(r"^(?:Weights only load failed\.\s*|.*WeightsUnpickler error:\s*)+")
_TORCH_NOISE = ("In PyTorch 2.6", "This file can still be loaded", "(1)", "(2)",
                "Check the documentation of torch.load", "Re-running `torch.load`")
_ALLOWLIST_ADVICE = re.compile(r"\s*Please use `torch\.serialization\.add_safe_globals.*$")
_UNSAFE_ADVICE = re.compile(r"weights_only`?\s*(?:set to\s*`?|=\s*)False")
_TRUNCATED_WORDS = ("eof", "truncated", "ran out of input", "central directory", "file not fully covered",
                    "unexpected end", "incomplete", "could not read bytes", "not fully written")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
               "STRING"}
_NEUTRAL_OPS = {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}
_RISKY_MODULES = {"os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "shutil", "socket", "runpy",
                  "importlib", "pty", "ctypes", "code", "pickle", "marshal", "types", "webbrowser"}
_LFS_PREFIX = b"version https://git-lfs"
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit
HF_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def clean_message(text: object, limit: int = 300) -> str:
    """A library's error text fit for our messages: one line, no ANSI escapes, no advice to unpickle unsafely.

    torch's weights-only messages wrap the one line that matters (the refused global, the bad opcode) in advice
    to load with ``weights_only=False``; only that line is kept.
    """
    kept = []
    for line in str(text).splitlines():
        line = _ALLOWLIST_ADVICE.sub("", _TORCH_PREFIX.sub("", _ANSI.sub("", line).strip())).strip()
        if line and not line.startswith(_TORCH_NOISE) and not _UNSAFE_ADVICE.search(line):
            kept.append(line)
    out = kept[-1] if kept else ""
    return out if len(out) <= limit else out[: limit - 3] + "..."


@dataclass(frozen=True)
class Damage:
    """What is wrong with a weight file: ``kind`` is truncated / corrupt / code / lfs / empty."""

    kind: str
    detail: str


def _allowed_globals(extra: Sequence[Any] = ()) -> tuple[set[str], bool]:
    """The globals torch's weights-only unpickler accepts (plus ``extra``); False when torch's list is unknown."""
    names = {f"{o.__module__}.{getattr(o, '__qualname__', getattr(o, '__name__', ''))}" for o in extra}
    try:
        from torch import _weights_only_unpickler as wou

        names |= set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
        return names, True
    except (ImportError, AttributeError):  # pragma: no cover - a torch without this private table
        return names, False


def _os_alias(name: str) -> str:
    """``posix.system`` -> ``posix.system, that is os.system``: os functions live in posix / nt."""
    module, _, attr = name.rpartition(".")
    return f"{name}, that is os.{attr}" if module in ("posix", "nt") else name


def _scan_pickles(stream, size: int, allowed: set[str], known: bool, count: int) -> Damage | None:
    """Read up to ``count`` consecutive pickles (the legacy torch container holds five) without executing them."""
    import pickletools

    found: list[str] = []
    for _ in range(count):
        start = stream.tell()
        if stream.read(1) != b"\x80":  # every torch pickle starts with PROTO
            break
        stream.seek(start)
        recent: list[object] = []
        memo: dict[int, object] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name in _STRING_OPS:
                    recent.append(arg)
                elif name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = recent[-1] if recent else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    recent.append(memo.get(arg))
                elif name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                    recent.append(None)
                elif name == "STACK_GLOBAL":
                    mod, qual = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
                    named = isinstance(mod, str) and isinstance(qual, str)
                    found.append(f"{mod}.{qual}" if named else "a global it names indirectly")
                    recent.append(None)
                elif name not in _NEUTRAL_OPS:
                    recent.append(None)
                del recent[:-2]
        except ValueError as exc:
            if stream.tell() >= size or "exhausted" in str(exc) or "remain" in str(exc) or "not enough" in str(exc):
                return Damage("truncated", f"its data stops after {size} bytes, in the middle of a pickle")
            return Damage("corrupt", f"invalid pickle data at byte {stream.tell()}")
    bad = [g for g in found if g not in allowed and not (not known and g.startswith(("torch.", "collections.")))]
    if not bad:
        return None
    # the most telling first: a shell / import / eval call before, say, a tensor pickled the plain way
    bad = sorted(dict.fromkeys(bad), key=lambda g: g.split(".")[0] not in _RISKY_MODULES)
    return Damage("code", "it calls " + _os_alias(bad[0]) + (f"; also {', '.join(bad[1:3])}" if len(bad) > 1 else ""))


def _inspect_safetensors(path: Path, size: int) -> Damage | None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return Damage("truncated", f"{size} bytes, shorter than the 8-byte safetensors header length")
        n = int.from_bytes(head, "little")
        if n == 0 or n > _SAFETENSORS_MAX_HEADER:
            return Damage("corrupt", "its first 8 bytes are not a safetensors header length: not a safetensors file")
        raw = f.read(n)
    if len(raw) < n:
        if raw[:1] == b"{":
            return Damage("truncated", f"its header needs {n} bytes, the file ends after {len(raw)}")
        return Damage("corrupt", "its first 8 bytes are not a safetensors header length: not a safetensors file")
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return Damage("corrupt", "its header is not valid safetensors JSON")
    need, have = max(ends, default=0), size - 8 - n
    if have < need:
        return Damage("truncated", f"its header describes {need} bytes of tensor data, the file holds {have}")
    if have > need:
        return Damage("corrupt", f"it holds {have - need} bytes more than its header describes")
    return None


def _inspect_torch(path: Path, size: int, allowed: set[str], known: bool) -> Damage | None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):  # the zip container of torch.save (torch >= 1.6)
        try:
            with zipfile.ZipFile(path) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    return Damage("corrupt", "a zip archive without data.pkl: not a PyTorch checkpoint")
                data = zf.read(pkl)
        except zipfile.BadZipFile as exc:
            if "CRC" in str(exc) or "Bad magic" in str(exc):
                return Damage("corrupt", f"a damaged zip archive ({exc})")
            return Damage("truncated", "a zip archive whose end, the zip directory, is missing")
        except (OSError, EOFError) as exc:
            return Damage("truncated", f"a zip archive that stops early ({exc})")
        import io

        return _scan_pickles(io.BytesIO(data), len(data), allowed, known, count=1)
    if magic[:1] == b"\x80":  # a pickle: the legacy torch container (five pickles, then raw storages) or plain
        with open(path, "rb") as f:
            return _scan_pickles(f, size, allowed, known, count=5)
    return Damage("corrupt", "it is neither a PyTorch checkpoint nor a safetensors file: it starts with bytes "
                             f"{magic.hex(' ')}")


def _inspect_npy(path: Path, size: int) -> Damage | None:
    import numpy as np
    import numpy.lib.format as npf

    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            f.seek(0)
            return Damage("corrupt", f"it is not a .npy file: it starts with bytes {f.read(4).hex(' ')}")
        f.seek(0)
        try:
            version = npf.read_magic(f)
            shape, _fortran, dtype = (npf.read_array_header_1_0(f) if version == (1, 0)
                                      else npf.read_array_header_2_0(f))
        except (ValueError, OSError, EOFError) as exc:
            return Damage("corrupt", f"its .npy header is unreadable ({clean_message(exc)})")
        start = f.tell()
        if dtype.hasobject:  # an object array is a pickle after the header
            numpy_own = {"numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                         "numpy.dtype"}
            found = _scan_pickles(f, size, numpy_own, True, count=1)
            return found or Damage("code", "it is an array of pickled Python objects, not numbers")
    need = int(dtype.itemsize) * int(np.prod(shape, dtype=np.int64))
    if size - start < need:
        return Damage("truncated", f"its header describes {need} bytes of data, the file holds {size - start}")
    return None


def _inspect_mat(path: Path, size: int) -> Damage | None:
    with open(path, "rb") as f:
        head = f.read(520)
    if head.startswith(b"MATLAB") or head[512:520] == b"\x89HDF\r\n\x1a\n":  # v5 header; v7.3 is HDF5
        return None  # the reader's own error (below) says whether it stops early
    return Damage("corrupt", f"it is not a MATLAB .mat file: it starts with bytes {head[:4].hex(' ')}")


def inspect_weight_file(path: Path | str, allowed: Sequence[Any] = ()) -> Damage | None:
    """What is wrong with the weight file ``path`` by its own structure, or None when nothing is found.

    Reads headers, the zip directory and the pickle opcodes only; never unpickles, never runs the file's code.
    ``allowed``: extra objects the caller admits in a pickle (as ``torch.serialization.safe_globals``).
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return Damage("empty", "0 bytes")
    with open(path, "rb") as f:
        start = f.read(len(_LFS_PREFIX))
    if start == _LFS_PREFIX:
        return Damage("lfs", f"{size} bytes of text")
    if path.name.endswith(".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return Damage("corrupt", f"not valid JSON ({clean_message(exc)})")
        return None
    if path.suffix == ".safetensors":
        return _inspect_safetensors(path, size)
    if path.suffix == ".npy":
        return _inspect_npy(path, size)
    if path.suffix == ".mat":
        return _inspect_mat(path, size)
    names, known = _allowed_globals(allowed)
    return _inspect_torch(path, size, names, known)


def _damage_error(path: Path, damage: Damage) -> ModelFileError:
    if damage.kind == "code":
        return ModelFileError(
            f"Refused to load {path}: unpickling it would run code ({damage.detail}), which a weight file "
            "never needs. Use the official file, or convert it to safetensors."
        )
    if damage.kind == "lfs":
        return ModelFileError(
            f"Model file {path} is a Git LFS pointer ({damage.detail}), not the weights: download the file itself "
            "(git lfs pull, or its download link)."
        )
    if damage.kind == "empty":
        return ModelFileError(f"Model file {path} is empty (0 bytes): download it again.")
    return ModelFileError(f"Model file {path} is {damage.kind} ({damage.detail}); download it again.")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _mark(err: ModelFileError, explained: bool) -> ModelFileError:
    """Note on ``err`` whether its message says everything (then the library's error is not chained to it)."""
    err._explained = explained  # type: ignore[attr-defined]
    return err


def weight_file_error(path: Path | str, exc: BaseException, allowed: Sequence[Any] = ()) -> ModelFileError:
    """The ModelFileError for ``exc``, raised while reading the weight file ``path`` (by any library).

    In order: a global torch's safe unpickler refused (named in its message), the file's own structure
    (:func:`inspect_weight_file`), transformers' refusal of ``.bin`` files under torch < 2.6, the wording of
    the error (EOF / truncated -> truncated).
    """
    path = Path(path)
    texts = [str(e) for e in _chain(exc)]
    err: ModelFileError | None = None
    for text in texts:
        m = _TORCH_GLOBAL.search(_ANSI.sub("", text))
        if m and ("Weights only" in text or "Unsupported global" in text or "blocked" in text):
            err = _damage_error(path, Damage("code", "it calls " + _os_alias(m.group(1).rstrip("."))))
            break
    if err is None:
        try:
            damage = inspect_weight_file(path, allowed) if path.is_file() else None
        except OSError as io_exc:
            damage = Damage("corrupt", f"unreadable: {clean_message(io_exc)}")
        if damage is not None:
            err = _damage_error(path, damage)
    if err is None and any("CVE-2025-32434" in t or "at least v2.6" in t for t in texts):
        err = ModelFileError(
            f"transformers refuses to open {path} with torch {torch.__version__}: it reads .bin files only with "
            "torch >= 2.6 (CVE-2025-32434). Upgrade torch, or use the model's safetensors file (model.safetensors)."
        )
    if err is None and not path.exists():
        err = ModelFileError(f"Model file {path} does not exist.")
    if err is not None:
        return _mark(err, True)
    detail = clean_message(exc) or type(exc).__name__
    if any(isinstance(e, EOFError) for e in _chain(exc)) or any(w in t.lower() for t in texts
                                                               for w in _TRUNCATED_WORDS):
        return _mark(ModelFileError(f"Model file {path} is truncated ({detail}); download it again."), True)
    err = ModelFileError(f"Model file {path} could not be read ({type(exc).__name__}: {detail}); download it "
                         "again, or convert it to safetensors.")
    return _mark(err, False)


def raise_load_error(path: Path | str, exc: BaseException, allowed: Sequence[Any] = ()) -> NoReturn:
    """Raise :func:`weight_file_error` for ``exc`` (a reader's error on ``path``), for loaders of other formats."""
    _raise_weight_error(weight_file_error(path, exc, allowed), exc)


def _raise_weight_error(err: ModelFileError, exc: BaseException) -> NoReturn:
    """Raise ``err`` alone when it explains everything, else chained to the library's error for debugging."""
    if getattr(err, "_explained", False):
        raise err from None
    raise err from exc


@contextmanager
def quiet_torch_load():
    """Hide torch's advice about pickle protocols while a file is read: a failure gets our own clear error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*pickle protocol", category=UserWarning)
        yield


def load_checkpoint(path: Path | str, *, allow_numpy_scalars: bool = False) -> Any:
    """Load a weight file without executing pickled code.

    ``.safetensors`` -> a dict of tensors; anything else goes through ``torch.load(weights_only=True)``
    onto the CPU. A file that needs code execution to unpickle is refused (naming what it would call), a
    truncated or corrupt file gets an error naming it (:func:`weight_file_error`). ``allow_numpy_scalars`` admits
    numpy scalars stored in training containers (the A2M checkpoint's best-validation value).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {path} does not exist.")
    if path.stat().st_size == 0:
        raise ModelFileError(f"Model file {path} is empty (0 bytes): download it again.")
    extra = _numpy_safe_globals() if allow_numpy_scalars else []
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with quiet_torch_load(), torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch / safetensors raise many types for damaged files; all are classified
        raise_load_error(path, exc, extra)


# ------------------------------------------------------------------------------------- Hugging Face folders


@contextmanager
def quiet_transformers():
    """Silence transformers' load report and progress bar while loading (our loaders raise clear errors)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def read_config(folder: Path | str, what: str, where: str = "") -> dict:
    """``config.json`` of a transformers / diffusers folder; ModelFileError naming the folder when absent or bad."""
    folder = Path(folder)
    path = folder / "config.json"
    hint = f" {where}" if where else ""
    if not path.is_file():
        raise ModelFileError(f"{folder} is not a {what} model folder: it has no config.json.{hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({clean_message(exc)}); download the {what} folder "
                             f"again.{hint}") from exc
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} does not hold a JSON object; download the {what} folder again.{hint}")
    return config


def pretrained_weight_files(folder: Path | str, names: Sequence[str] = HF_WEIGHT_NAMES) -> list[Path]:
    """The weight file(s) ``from_pretrained`` reads in ``folder``: the first of ``names`` present (safetensors
    before .bin, as transformers and diffusers prefer); an ``.index.json`` is followed by its shards."""
    folder = Path(folder)
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return [path]
        return [path] + [folder / s for s in shards]
    return []


def folder_load_error(folder: Path | str, exc: BaseException, what: str, where: str = "",
                      names: Sequence[str] = HF_WEIGHT_NAMES) -> ModelFileError:
    """The ModelFileError for ``exc`` raised by ``from_pretrained(folder)``: naming the weight file inside the
    folder when that file is the cause (damaged, missing shard, refused pickle), else the folder."""
    folder = Path(folder)
    hint = f" {where}" if where else ""
    files = pretrained_weight_files(folder, names)
    if not files:
        expected = " or ".join(n for n in names if not n.endswith(".index.json"))
        err = ModelFileError(f"{folder} holds no {what} weights: expected {expected} beside config.json.{hint}")
        return _mark(err, True)
    for f in files:
        if not f.is_file():
            err = ModelFileError(f"{files[0]} names the shard {f.name}, which is missing from {folder}; download "
                                 f"the {what} folder again.{hint}")
            return _mark(err, True)
    for f in files:  # the files' own structure first: it says which file is damaged
        try:
            damage = inspect_weight_file(f)
        except OSError:
            damage = None
        if damage is not None:
            err = _damage_error(f, damage)
            return _mark(err, True)
    if len(files) == 1:  # one weight file and the error is about reading it (a refused global, torch < 2.6)
        err = weight_file_error(files[0], exc)
        read_error = any(isinstance(e, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile))
                         or type(e).__name__ == "SafetensorError" for e in _chain(exc))
        if getattr(err, "_explained", False) or read_error:
            return err
    err = ModelFileError(f"Could not load {what} from {folder}: {clean_message(exc).rstrip('.')}.{hint}")
    return _mark(err, False)


def load_pretrained(cls, folder: Path | str, *, what: str, model_type: str, where: str = ""):
    """``cls.from_pretrained(folder)`` (transformers, local files only, quiet) -> (model, loading info).

    ``config.json`` must exist and name ``model_type``; any failure is one ModelFileError naming the folder,
    or the weight file inside it when that is the cause (:func:`folder_load_error`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{what} folder {folder} does not exist.{' ' + where if where else ''}")
    config = read_config(folder, what, where)
    found = config.get("model_type")
    if found != model_type:
        archs = ", ".join(map(str, config.get("architectures") or [])) or "no architectures listed"
        raise ModelFileError(f"{folder} holds a {found or 'unknown'} model ({archs}), not {what}: its config.json "
                             f"has model_type {found!r}, expected {model_type!r}.{' ' + where if where else ''}")
    try:
        with quiet_transformers(), quiet_torch_load():
            return cls.from_pretrained(str(folder), output_loading_info=True, local_files_only=True)
    except ModelFileError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, RuntimeError or the reader's own errors
        _raise_weight_error(folder_load_error(folder, exc, what, where), exc)


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
