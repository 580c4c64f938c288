"""BiSeNet face parsing: the official file layout, strict loading, and the official pre/post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from joygen_core.edit.parsing import (
    BiSeNet,
    load_face_parser,
    parse_faces,
    parse_labels,
)
from joygen_core.errors import ModelFileError

NAME = "face-parse-bisent/79999_iter.pth"


@pytest.fixture(scope="module")
def parser_file(tmp_path_factory):
    from factory import make_models_folder

    return make_models_folder(tmp_path_factory.mktemp("parsing"), only=["parsing"]) / NAME


@pytest.fixture(scope="module")
def parser(parser_file):
    return load_face_parser(parser_file)


class LabelMap(torch.nn.Module):
    """A stand-in parser whose logits pick a fixed label per column: every one of the 19 classes appears."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = (torch.arange(x.shape[3]) // 27 % 19).expand(x.shape[0], x.shape[2], -1)
        return torch.nn.functional.one_hot(labels, 19).permute(0, 3, 1, 2).float()


def test_official_key_layout():
    """Keys and shapes as face-parsing.PyTorch's BiSeNet(19) writes them (191 entries, 13,313,119 values)."""
    with torch.device("meta"):
        sd = BiSeNet().state_dict()
    assert len(sd) == 191
    assert sum(v.numel() for v in sd.values()) == 13_313_119
    expected = {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.layer1.0.bn1.num_batches_tracked": (),
        "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cp.resnet.layer4.1.conv2.weight": (512, 512, 3, 3),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
        "cp.arm32.bn_atten.running_var": (128,),
        "cp.conv_head16.bn.weight": (128,),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "ffm.conv1.weight": (64, 256, 1, 1),
        "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3),
        "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv_out.weight": (19, 64, 1, 1),
        "conv_out32.conv.conv.weight": (64, 128, 3, 3),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith(("cp.resnet.fc", "sp.")) for k in sd)


def test_official_file_loads_strictly(parser_file, parser):
    state = torch.load(parser_file, weights_only=True)
    assert set(state) == set(parser.state_dict())
    for k in ("cp.resnet.conv1.weight", "ffm.conv2.weight", "conv_out.conv_out.weight"):
        torch.testing.assert_close(parser.state_dict()[k], state[k])
    assert not parser.training and not any(p.requires_grad for p in parser.parameters())


def test_file_from_old_torch_without_bn_counters_loads(parser_file, tmp_path):
    state = {k: v for k, v in torch.load(parser_file, weights_only=True).items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    load_face_parser(tmp_path / "old.pth")


@pytest.mark.parametrize("change, needle", [
    ("rename", "cp.arm16.conv_atten.weight"),
    ("shape", "conv_out.conv_out.weight"),
    ("extra", "sp.conv1.conv.weight"),
])
def test_wrong_file_names_the_key(parser_file, tmp_path, change, needle):
    state = torch.load(parser_file, weights_only=True)
    if change == "rename":
        state["cp.arm16.conv_attn.weight"] = state.pop(needle)
    elif change == "shape":
        state[needle] = torch.zeros(18, 256, 1, 1)
    else:
        state[needle] = torch.zeros(64, 3, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match="BiSeNet") as err:
        load_face_parser(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_not_a_parsing_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"net_recon": {"backbone.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ModelFileError, match="not a BiSeNet face-parsing state dict"):
        load_face_parser(path)


def test_labels_1_to_13_are_face():
    img = torch.full((1, 512, 512, 3), 128, dtype=torch.uint8)
    mask = parse_faces(LabelMap(), img)
    labels = torch.arange(512) // 27 % 19
    expected = ((labels >= 1) & (labels <= 13)).to(torch.uint8) * 255
    assert mask.dtype == torch.uint8 and mask.shape == (1, 512, 512)
    assert torch.equal(mask[0], expected.expand(512, 512))


def official_face_parsing(model, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """JoyGen FaceParsing on one RGB array: (labels at 512x512, face mask 'L' resized back to the frame)."""
    img = Image.fromarray(frame).resize((512, 512), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        labels = model(x[None]).argmax(1)[0].numpy()
    face = np.where((labels >= 1) & (labels <= 13), 255, 0).astype(np.uint8)
    return labels, np.asarray(Image.fromarray(face).resize((frame.shape[1], frame.shape[0])))


def test_labels_match_official_preprocessing(parser, face_frames):
    """A real frame through the BiSeNet file: PIL BILINEAR to 512 + ToTensor/Normalize + argmax."""
    frame = np.ascontiguousarray(face_frames[0][20:300, 10:260])  # non-square: the resize stretches it
    ref_labels, ref_mask = official_face_parsing(parser, frame)
    labels = parse_labels(parser, torch.from_numpy(frame)[None])[0].numpy()
    assert (labels == ref_labels).mean() > 0.999
    assert 0.05 < (ref_mask > 0).mean() < 0.95  # the random weights give a mask with edges


class Bright(torch.nn.Module):
    """A stand-in parser: label 1 (skin) where the normalised red channel is positive, else 0."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 19, *x.shape[2:])
        logits[:, 1] = torch.where(x[:, 0] > 0, 1.0, -1.0)
        return logits


def test_face_mask_matches_official_and_batches(face_frames):
    """parse_faces against the official per-image code (any parser), and batched = one by one."""
    imgs = torch.from_numpy(face_frames[:2, :200, :170].copy())
    together = parse_faces(Bright(), imgs, batch_size=2)
    alone = torch.cat([parse_faces(Bright(), imgs[i:i + 1]) for i in range(2)])
    assert torch.equal(together, alone)
    for i in range(2):
        np.testing.assert_array_equal(together[i].numpy(), official_face_parsing(Bright(), imgs[i].numpy())[1])
    assert 0.05 < (together > 0).float().mean() < 0.95


def test_bad_images():
    with pytest.raises(ValueError, match="uint8 RGB"):
        parse_faces(LabelMap(), torch.zeros(1, 64, 64, 3))
    with pytest.raises(ValueError, match="uint8 RGB"):
        parse_labels(LabelMap(), torch.zeros(64, 64, 3, dtype=torch.uint8))
