"""The editing models load from official-format diffusers folders, strictly, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from factory._damage import expect_clear_error, pickle_payload, random_bytes, truncate
from joygen_core.edit import editor
from joygen_core.edit.models import load_unet, load_vae, rename_legacy_keys
from joygen_core.errors import ModelFileError


@pytest.fixture(scope="module")
def edit_folders(tmp_path_factory):
    from factory.edit import write_unet, write_vae

    root = tmp_path_factory.mktemp("edit")
    return write_unet(root / "joygen"), write_vae(root / "sd-vae-ft-mse"), root


def test_vae_with_old_attention_names_matches_diffusers(edit_folders):
    from diffusers import AutoencoderKL

    _, vae_dir, _ = edit_folders
    ours = load_vae(vae_dir)
    ref = AutoencoderKL.from_pretrained(vae_dir).eval()  # diffusers' own loader, converting the old names
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a = ours.encode(x).latent_dist.mean
        b = ref.encode(x).latent_dist.mean
    assert torch.equal(a, b)


def test_unet_loads_strictly_and_matches_diffusers(edit_folders):
    from diffusers import UNet2DConditionModel

    unet_dir, _, _ = edit_folders
    ours = load_unet(unet_dir)
    ref = UNet2DConditionModel.from_pretrained(unet_dir).eval()
    x, a = torch.randn(2, 12, 32, 32), torch.randn(2, 50, 384)
    with torch.no_grad():
        assert torch.equal(editor.predict_latents(ours, x, a), ref(x, 0, encoder_hidden_states=a).sample)


def test_musetalk_unet_is_refused_with_a_clear_message(tmp_path):
    from factory.edit import write_unet

    folder = write_unet(tmp_path / "musetalk", in_channels=8)
    with pytest.raises(ModelFileError, match="MuseTalk UNet"):
        load_unet(folder)


def test_wrong_shapes_and_missing_files_name_the_problem(edit_folders, tmp_path):
    import shutil

    unet_dir, vae_dir, _ = edit_folders
    bad = tmp_path / "bad_vae"
    shutil.copytree(vae_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["latent_channels"] = 8
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="shape mismatches"):
        load_vae(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="no config.json"):
        load_unet(empty)
    (empty / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 12,
                                                   "cross_attention_dim": 384}))
    with pytest.raises(ModelFileError, match="holds no UNet weights"):
        load_unet(empty)


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "code"])
@pytest.mark.parametrize("which", ["unet", "vae"])
def test_damaged_weight_files_name_the_file(edit_folders, tmp_path, which, damage):
    import shutil

    unet_dir, vae_dir, _ = edit_folders
    folder = Path(shutil.copytree(unet_dir if which == "unet" else vae_dir, tmp_path / which))
    load = load_unet if which == "unet" else load_vae
    weights = folder / "diffusion_pytorch_model.safetensors"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        truncate(weights)
    elif damage == "corrupt":
        weights = random_bytes(weights.with_suffix(".bin"))
        (folder / "diffusion_pytorch_model.safetensors").unlink()
    else:
        from safetensors.torch import load_file

        state = load_file(str(weights))
        weights.unlink()
        weights = pickle_payload(folder / "diffusion_pytorch_model.bin", marker, state=state)
    expect_clear_error(lambda: load(folder), weights, damage, marker)


def test_legacy_rename_only_touches_attention_projections():
    state = {"encoder.mid_block.attentions.0.query.weight": 1, "encoder.mid_block.attentions.0.proj_attn.bias": 2,
             "encoder.down_blocks.0.resnets.0.conv1.weight": 3}
    assert rename_legacy_keys(state) == {"encoder.mid_block.attentions.0.to_q.weight": 1,
                                         "encoder.mid_block.attentions.0.to_out.0.bias": 2,
                                         "encoder.down_blocks.0.resnets.0.conv1.weight": 3}


def test_face_crop_and_vae_input_follow_the_official_rules():
    frames = torch.full((1, 40, 40, 3), 200, dtype=torch.uint8)
    crop = editor.face_crops(frames, torch.tensor([[-20, 0, 20, 40]]), size=40)
    assert crop[0, :, :18].max() == 0 and crop[0, :, 22:].min() == 200  # zero fill left of the frame
    x = editor.to_vae_input(torch.full((1, 8, 8, 3), 255, dtype=torch.uint8), lower_half_black=True)
    assert x.shape == (1, 3, 8, 8)
    assert torch.all(x[:, :, :4] == 1) and torch.all(x[:, :, 4:] == -1)


# ---------------------------------------------------------------- reduced precision, channels-last (the GPU path)


def _edit_inputs(n: int = 3):
    g = torch.Generator().manual_seed(0)
    lat = [torch.randn(n, 4, 32, 32, generator=g) for _ in range(2)]
    depth = torch.zeros(n, 256, 256, dtype=torch.uint8)
    depth[:, 150:200, 90:170] = 200
    return lat[0], lat[1], depth, torch.randn(n, 50, 384, generator=g)


def _edit(models, masked, reference, depth, audio):
    d = editor.encode_on_device(models, editor.to_vae_input(depth))
    return editor.edit_batch(models, masked, reference, d, audio)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_edit_is_close_to_float32(edit_folders, dtype):
    from joygen_core.edit.models import load_edit_models

    unet_dir, vae_dir, _ = edit_folders
    ref = load_edit_models(unet_dir, vae_dir, "cpu", torch.float32)
    low = load_edit_models(unet_dir, vae_dir, "cpu", dtype)
    assert next(low.unet.parameters()).dtype == dtype and next(low.vae.parameters()).dtype == dtype
    inputs = _edit_inputs()
    try:
        got = _edit(low, *inputs)
    except RuntimeError as exc:  # a CPU kernel this torch build lacks in that dtype
        pytest.skip(f"{dtype} on this CPU: {exc}")
    want = _edit(ref, *inputs)
    assert got.dtype == torch.uint8 and got.shape == want.shape == (3, 256, 256, 3)
    diff = (got.int() - want.int()).abs().float()
    assert diff.mean() < 3 and diff.quantile(0.99) <= 16, (diff.mean(), diff.max())  # rounding, not another picture
    assert want.float().std() > 5  # the comparison is of real pictures


def test_channels_last_matches_eager_nchw(edit_folders):
    from joygen_core.edit.models import load_edit_models

    unet_dir, vae_dir, _ = edit_folders
    ref = load_edit_models(unet_dir, vae_dir)
    fast = load_edit_models(unet_dir, vae_dir, channels_last=True)
    assert fast.channels_last and "channels_last" in repr(fast)
    w = fast.unet.conv_in.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    inputs = _edit_inputs()
    got, want = _edit(fast, *inputs), _edit(ref, *inputs)
    assert (got.int() - want.int()).abs().max() <= 1  # the same sums in another order: at most a rounding step
    masked, reference, depth, audio = inputs
    lat, lat0 = (editor.encode(m, editor.to_vae_input(depth)) for m in (fast, ref))
    assert (lat - lat0).abs().max() < 1e-2 * lat0.abs().max()  # float32 rounding only


def test_the_batch_step_makes_no_host_round_trip(edit_folders, monkeypatch):
    """edit_batch leaves its result on the device: no .cpu() / .item() / .tolist() / .numpy() inside (each would
    wait for the GPU in the middle of the batch loop)."""
    from joygen_core.edit.models import load_edit_models

    unet_dir, vae_dir, _ = edit_folders
    models = load_edit_models(unet_dir, vae_dir)
    inputs = _edit_inputs(2)

    def sync(*a, **kw):
        raise AssertionError("host synchronisation inside the batch step")

    for name in ("cpu", "item", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    faces = _edit(models, *inputs)
    monkeypatch.undo()
    assert faces.shape == (2, 256, 256, 3) and faces.dtype == torch.uint8
