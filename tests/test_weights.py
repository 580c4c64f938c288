"""The weight store: safe loading, name confinement, symlinks followed, one clear error per damaged file."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factory._damage import expect_clear_error, pickle_payload, random_bytes, truncate
from joygen_core.errors import ModelFileError, UnsafePathError
from joygen_core.weights import (
    MANIFEST,
    ModelStore,
    check_state_dict,
    clean_message,
    load_checkpoint,
    resolve_in,
    weight_file_error,
)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("suffix", [".pth", ".ckpt", ".bin"])
def test_pickled_code_is_refused_naming_the_global_and_never_runs(tmp_path, fmt, suffix):
    marker = tmp_path / "pwned"
    bad = pickle_payload(tmp_path / f"bad{suffix}", marker, fmt, state={"net_recon": {"w": torch.zeros(2)}})
    msg = expect_clear_error(lambda: load_checkpoint(bad), bad, "code", marker)
    assert msg.startswith(f"Refused to load {bad}: unpickling it would run code")


@pytest.mark.parametrize("suffix", [".pth", ".ckpt", ".bin", ".pt", ".safetensors"])
def test_random_bytes_are_corrupt_not_code(tmp_path, suffix):
    bad = random_bytes(tmp_path / f"noise{suffix}")
    expect_clear_error(lambda: load_checkpoint(bad), bad, "corrupt")


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_files_cut_in_half_are_truncated(tmp_path, fmt):
    from safetensors.torch import save_file

    sd = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path, _use_new_zipfile_serialization=fmt == "zip")
    expect_clear_error(lambda: load_checkpoint(truncate(path)), path, "truncated")


def test_git_lfs_pointer_is_named(tmp_path):
    bad = tmp_path / "epoch_20.pth"
    bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n")
    with pytest.raises(ModelFileError, match="epoch_20.pth is a Git LFS pointer"):
        load_checkpoint(bad)


def test_torch_refusal_with_ansi_codes_and_unsafe_advice_becomes_one_plain_message(tmp_path):
    # torch's wording when a global is not allow-listed: bold ANSI codes and advice to pass weights_only=False
    raw = ("Weights only load failed. This file can still be loaded, to do so you have two options, \x1b[1mdo those "
           "steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) Re-running `torch.load` with "
           "`weights_only` set to `False` will likely succeed, but it can result in arbitrary code execution.\n\t"
           "WeightsUnpickler error: Unsupported global: GLOBAL posix.system was not an allowed global by default.")
    f = tmp_path / "x.pth"
    torch.save({"w": torch.zeros(1)}, f)
    msg = str(weight_file_error(f, pickle.UnpicklingError(raw)))
    assert "posix.system, that is os.system" in msg and str(f) in msg
    assert "\x1b" not in msg and "weights_only" not in msg
    assert clean_message(raw + "\n\nCheck the documentation of torch.load to learn more") == (
        "Unsupported global: GLOBAL posix.system was not an allowed global by default.")


def test_tensor_files_load(tmp_path):
    from safetensors.torch import save_file

    sd = {"a": torch.arange(6.0).reshape(2, 3)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"net_recon": sd, "epoch": 20}, tmp_path / "w.pth")
    torch.save({"state_dict": {"model": sd}}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(tmp_path / "w.safetensors")["a"], sd["a"])
    assert torch.equal(load_checkpoint(tmp_path / "w.pth")["net_recon"]["a"], sd["a"])
    assert torch.equal(load_checkpoint(tmp_path / "legacy.ckpt")["state_dict"]["model"]["a"], sd["a"])


def test_numpy_scalars_only_when_allowed(tmp_path):
    path = tmp_path / "a2m.ckpt"
    torch.save({"best_valid": np.float64(0.25), "state_dict": {"model": {}}}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match="would run code .it calls numpy.*scalar"):
        load_checkpoint(path)
    assert float(load_checkpoint(path, allow_numpy_scalars=True)["best_valid"]) == 0.25


@pytest.mark.parametrize("cut", [0, 100, -50])
def test_truncated_or_empty_files_are_clear_errors(tmp_path, cut):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(64, 64)}, good)
    data = good.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[:cut] if cut else b"")
    with pytest.raises(ModelFileError, match=str(bad.name)):
        load_checkpoint(bad)


def test_corrupt_safetensors(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelFileError, match="safetensors"):
        load_checkpoint(bad)


@pytest.mark.parametrize("name", ["../secret.pth", "BFM/../../secret.pth", "sub/../../etc/passwd", "/etc/passwd",
                                  "", " ", "C:\\x", "C:x", "C:/Windows/x", "sub\\..\\..\\secret.pth",
                                  "\\\\server\\share\\x", "\\secret.pth", "a.pth:stream", "a\x00.pth"])
def test_names_cannot_escape_the_model_folder(tmp_path, name):
    root = tmp_path / "joygen"
    root.mkdir()
    (tmp_path / "secret.pth").write_bytes(b"x")
    with pytest.raises(UnsafePathError):
        resolve_in(root, name)
    with pytest.raises(UnsafePathError):
        ModelStore(root).path(name)


def test_symlinks_placed_in_the_folder_are_followed_and_listed(tmp_path):
    # the owner's weights live elsewhere (another disk, a shared bundle): a file and a sub-folder symlinked in
    elsewhere = tmp_path / "other_disk"
    (elsewhere / "hubert").mkdir(parents=True)
    (elsewhere / "tiny.pt").write_bytes(b"x")
    (elsewhere / "hubert" / "config.json").write_text("{}")
    (elsewhere / "hubert" / "model.safetensors").write_bytes(b"y")
    root = tmp_path / "joygen"
    (root / "whisper").mkdir(parents=True)
    (root / "whisper" / "tiny.pt").symlink_to(elsewhere / "tiny.pt")
    (root / "audio2motion").mkdir()
    (root / "audio2motion" / "hubert").symlink_to(elsewhere / "hubert", target_is_directory=True)
    (root / "real.pt").write_bytes(b"z")
    (root / "link.pt").symlink_to(root / "real.pt")
    store = ModelStore(root)
    assert store.path("whisper") == root / "whisper" / "tiny.pt"  # the name here, not the blob it points to
    assert store.path("whisper").read_bytes() == b"x"
    assert store.path("hubert") == root / "audio2motion" / "hubert"
    assert store.path("audio2motion/hubert/model.safetensors").read_bytes() == b"y"
    assert store.path("link.pt").read_bytes() == b"z"
    assert store.list_files((".pt",)) == ["link.pt", "real.pt", "whisper/tiny.pt"]
    assert "audio2motion/hubert/model.safetensors" in store.list_files()
    assert store.list_folders() == ["audio2motion/hubert"]
    assert resolve_in(root, "whisper/tiny.pt") == root / "whisper" / "tiny.pt"


def test_symlink_loops_and_broken_links(tmp_path):
    root = tmp_path / "joygen"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.pth").write_bytes(b"x")
    (root / "sub" / "again").symlink_to(root, target_is_directory=True)  # a loop back to the root
    (root / "sub" / "twin").symlink_to(root / "sub", target_is_directory=True)  # itself
    (root / "gone.pth").symlink_to(tmp_path / "unmounted" / "gone.pth")
    (root / "gone_dir").symlink_to(tmp_path / "unmounted" / "folder", target_is_directory=True)
    store = ModelStore(root)
    assert store.list_files((".pth",)) == ["sub/a.pth"]  # finite, and the dangling link is not offered
    with pytest.raises(ModelFileError, match="is a symlink to .*unmounted.*which does not exist"):
        store.path("gone.pth")
    with pytest.raises(ModelFileError, match="gone_dir is a symlink to .*which does not exist"):
        store.path("gone_dir/x.pth")


def test_loaders_work_through_symlinks_to_the_hf_cache_and_another_disk(models_dir, tmp_path):
    """A HuBERT folder inside a Hugging Face cache (files are links to hash-named blobs, no suffix), the
    audio-to-motion folder and Whisper file on another disk: all load through the store by their names here."""
    from joygen_core.audio.hubert import load_hubert
    from joygen_core.audio.whisper import load_whisper_encoder
    from joygen_core.motion.a2m import load_a2m

    cache = tmp_path / "hf_cache" / "models--facebook--hubert-large-ls960-ft"
    snapshot = cache / "snapshots" / "0123abcd"
    (cache / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted((models_dir / "audio2motion" / "hubert").iterdir())):
        blob = cache / "blobs" / f"{i:02d}deadbeef"
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    root = tmp_path / "joygen"
    (root / "audio2motion").mkdir(parents=True)
    (root / "audio2motion" / "hubert").symlink_to(snapshot, target_is_directory=True)
    a2m = "audio2motion/240210_real3dportrait_orig"
    (root / a2m).symlink_to(models_dir / a2m, target_is_directory=True)
    (root / "whisper").mkdir()
    (root / "whisper" / "tiny.pt").symlink_to(models_dir / "whisper" / "tiny.pt")
    store = ModelStore(root)
    assert load_hubert(store.path("hubert")).config.hidden_size == 1024
    assert load_a2m(store.path("a2m"), store.path("a2m_config")) is not None
    assert load_whisper_encoder(store.path("whisper")).config.d_model == 384
    assert "audio2motion/hubert" in store.list_folders()
    assert any(n.endswith("model_ckpt_steps_400000.ckpt") for n in store.list_files((".ckpt",), under="audio2motion"))


def test_missing_folder_and_file_messages(tmp_path):
    with pytest.raises(ModelFileError, match="model folder does not exist"):
        ModelStore(tmp_path / "nope").path("bfm")
    root = tmp_path / "joygen"
    root.mkdir()
    with pytest.raises(ModelFileError) as err:
        ModelStore(root).path("face_recon")
    msg = str(err.value)
    assert "face_recon_feat0.2_augment/epoch_20.pth" in msg and "Get it from" in msg


def test_store_searches_roots_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "whisper").mkdir(parents=True)
    (b / "whisper").mkdir(parents=True)
    (b / "whisper" / "tiny.pt").write_bytes(b"b")
    store = ModelStore([a, b])
    assert store.path("whisper") == b / "whisper" / "tiny.pt"
    (a / "whisper" / "tiny.pt").write_bytes(b"a")
    assert store.path("whisper") == a / "whisper" / "tiny.pt"


def test_manifest_covers_the_official_bundle():
    paths = {m.path for m in MANIFEST}
    for expected in ["BFM/BFM_model_front.mat", "face_recon_feat0.2_augment/epoch_20.pth", "whisper/tiny.pt",
                     "audio2motion/240210_real3dportrait_orig/audio2secc_vae/model_ckpt_steps_400000.ckpt",
                     "audio2motion/240210_real3dportrait_orig/audio2secc_vae/config.yaml",
                     "audio2motion/hubert", "joygen", "sd-vae-ft-mse", "face-parse-bisent/79999_iter.pth"]:
        assert expected in paths


def test_check_state_dict_names_the_problem():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    sd = net.state_dict()
    check_state_dict(dict(sd), net, "f.pth", what="toy")
    bad = dict(sd)
    bad["1.weight"] = torch.zeros(5, 4)
    del bad["0.bias"]
    bad["extra"] = torch.zeros(1)
    with pytest.raises(ModelFileError) as err:
        check_state_dict(bad, net, "f.pth", what="toy")
    msg = str(err.value)
    assert "0.bias" in msg and "extra" in msg and "1.weight" in msg and "(5, 4)" in msg


def test_cli_models_table(tmp_path):
    root = tmp_path / "joygen"
    (root / "whisper").mkdir(parents=True)
    (root / "whisper" / "tiny.pt").write_bytes(b"x")
    out = subprocess.run([sys.executable, "-m", "joygen_core", "models", "--models", str(root)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=True).stdout
    line = next(row for row in out.splitlines() if "whisper/tiny.pt" in row)
    assert line.startswith("present")
    assert any(row.startswith("MISSING") and "BFM/BFM_model_front.mat" in row for row in out.splitlines())


def test_download_places_hub_pieces_in_the_official_layout(tmp_path, monkeypatch):
    import huggingface_hub

    from joygen_core import download as dl

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, local_dir, allow_patterns: calls.append((repo_id, local_dir)))
    out = dl.download(tmp_path, ["vae", "hubert"])
    assert calls == [("stabilityai/sd-vae-ft-mse", str(tmp_path / "sd-vae-ft-mse")),
                     ("facebook/hubert-large-ls960-ft", str(tmp_path / "audio2motion" / "hubert"))]
    assert out[0] == tmp_path / "sd-vae-ft-mse"
    with pytest.raises(ModelFileError, match="Not on the Hugging Face hub"):
        dl.download(tmp_path, ["joygen_unet"])
