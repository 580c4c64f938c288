"""BiSeNet face parsing (19 CelebAMask-HQ classes), as JoyGen uses it to build its blending mask.

Official (zllrunning/face-parsing.PyTorch ``model.py`` / ``resnet.py``, copied into MuseTalk and JoyGen
``utils/face_parsing``): a ResNet-18 context path with two attention refinement modules, the 1/8
ResNet feature standing in for the spatial path, a feature fusion module and three output heads
(main + two auxiliary, the auxiliary ones only trained). The released ``79999_iter.pth`` is a plain
state dict (``cp.resnet.*``, ``cp.arm16.*``, ``cp.arm32.*``, ``cp.conv_head16/32.*``, ``cp.conv_avg.*``,
``ffm.*``, ``conv_out.*``, ``conv_out16.*``, ``conv_out32.*``); the ResNet keys are torchvision's, so
the backbone here is torchvision's ``resnet18`` without its fc.

JoyGen ``FaceParsing.__call__``: PIL ``resize((512, 512), BILINEAR)`` of an RGB image, ``ToTensor`` +
ImageNet ``Normalize``, argmax over the main output, labels ``> 13`` set to 0 and ``>= 1`` to 255, and
the 'L' mask resized back to the input size with PIL's default filter (bicubic). Both PIL resizes are
reproduced on batched tensors to the pixel (:mod:`joygen_core.pil_resize`).

Public API::

    load_face_parser(path, device="cpu", dtype=torch.float32) -> BiSeNet
    parse_labels(model, images uint8 [B,H,W,3]) -> int64 [B,512,512]   class labels of the 512x512 resize
    parse_faces(model, images uint8 [B,H,W,3]) -> uint8 [B,H,W]         official face mask 0..255
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from ..pil_resize import pil_matrix, resize_rows
from ..weights import check_state_dict, load_checkpoint

log = logging.getLogger(__name__)

N_CLASSES = 19
PARSE_SIZE = 512
FACE_LABELS = (1, 13)  # official: labels 1..13 are face (skin, brows, eyes, glasses, ears, nose, mouth, lips)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ the network


class _ConvBNReLU(nn.Module):
    """conv (no bias) -> BN -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, ks: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, 1, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _AttentionRefinement(nn.Module):
    """3x3 conv block, then a channel gate from its global average (1x1 conv, BN, sigmoid)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * gate


class _ContextPath(nn.Module):
    """ResNet-18 features at 1/8, 1/16, 1/32, refined top-down with a global-context term."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        resnet = resnet18(weights=None)
        del resnet.fc  # official Resnet18 has no classifier; the other keys are torchvision's
        self.resnet = resnet
        self.arm16 = _AttentionRefinement(256, 128)
        self.arm32 = _AttentionRefinement(512, 128)
        self.conv_head32 = _ConvBNReLU(128, 128)
        self.conv_head16 = _ConvBNReLU(128, 128)
        self.conv_avg = _ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        feat8 = r.layer2(r.layer1(x))
        feat16 = r.layer3(feat8)
        feat32 = r.layer4(feat16)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))  # broadcast = official nearest upsampling of 1x1
        up32 = F.interpolate(self.arm32(feat32) + avg, size=feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        up16 = self.conv_head16(up16)
        return feat8, up16, up32  # 1/8 ResNet feature, 1/8 and 1/16 context


class _FeatureFusion(nn.Module):
    """Concatenate, 1x1 conv block, and add a squeeze-excitation re-weighting of it."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = _ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * gate + feat


class _OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The face-parsing BiSeNet; ``state_dict()`` keys and shapes are those of ``79999_iter.pth``."""

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.cp = _ContextPath()
        self.ffm = _FeatureFusion(256, 256)
        self.conv_out = _OutputHead(256, 256, n_classes)
        self.conv_out16 = _OutputHead(128, 64, n_classes)  # auxiliary heads: trained, unused at inference
        self.conv_out32 = _OutputHead(128, 64, n_classes)

    def forward(self, x: torch.Tensor, aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Normalised RGB [B,3,H,W] -> main logits [B,19,H,W] (``aux``: also the two auxiliary outputs).

        Official: every output is upsampled to the input size, bilinear with ``align_corners=True``.
        """
        size = x.shape[2:]
        feat8, cp8, cp16 = self.cp(x)
        out = F.interpolate(self.conv_out(self.ffm(feat8, cp8)), size=size, mode="bilinear", align_corners=True)
        if not aux:
            return out
        out16 = F.interpolate(self.conv_out16(cp8), size=size, mode="bilinear", align_corners=True)
        out32 = F.interpolate(self.conv_out32(cp16), size=size, mode="bilinear", align_corners=True)
        return out, out16, out32


def load_face_parser(path: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                     ) -> BiSeNet:
    """Load ``face-parse-bisent/79999_iter.pth`` strictly (every key and shape must match)."""
    path = Path(path)
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not any(str(k).startswith("cp.resnet.") for k in state):
        found = list(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise ModelFileError(f"{path} is not a BiSeNet face-parsing state dict (79999_iter.pth from "
                             f"face-parsing.PyTorch, keys 'cp.resnet.conv1.weight', ...); found {found}.")
    model = BiSeNet()
    state = dict(state)
    # BN batch counters only count training steps; files written by old torch versions lack them.
    for k, v in model.state_dict().items():
        stem = k.removesuffix("num_batches_tracked")
        if stem != k and k not in state and stem + "running_mean" in state:
            state[k] = torch.zeros_like(v)
    check_state_dict(state, model, path, what="BiSeNet face-parsing (face-parse-bisent/79999_iter.pth)")
    model.load_state_dict(state, strict=True)
    model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------ windows


def _gather(frames: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, hgt: torch.Tensor, wid: torch.Tensor,
            nh: int, nw: int) -> torch.Tensor:
    """Windows [B,nh,nw,C] of frames [B,H,W,C] at (y0, x0), zero outside the frame and past (hgt, wid).

    The zeros reproduce PIL ``Image.crop`` of a box reaching outside the image.
    """
    b, h, w = frames.shape[:3]
    dev = frames.device
    rows = y0.to(dev)[:, None] + torch.arange(nh, device=dev)
    cols = x0.to(dev)[:, None] + torch.arange(nw, device=dev)
    ok_r = (rows >= 0) & (rows < h) & (torch.arange(nh, device=dev) < hgt.to(dev)[:, None])
    ok_c = (cols >= 0) & (cols < w) & (torch.arange(nw, device=dev) < wid.to(dev)[:, None])
    bi = torch.arange(b, device=dev)[:, None, None]
    win = frames[bi, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    ok = ok_r[:, :, None] & ok_c[:, None, :]
    return win * ok.reshape(*ok.shape, *([1] * (win.ndim - 3))).to(win.dtype)


# ------------------------------------------------------------------ parsing


def _check_images(images: torch.Tensor, what: str) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what} wants uint8 RGB images [B,H,W,3]; got {images.dtype} {tuple(images.shape)}")
    return images


@torch.inference_mode()
def _labels_of_windows(model: BiSeNet, frames: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
                       hgt: torch.Tensor, wid: torch.Tensor) -> torch.Tensor:
    """Labels [B,512,512] of the (zero-filled) windows of frames [B,H,W,3] uint8, official preprocessing."""
    p = next(model.parameters())
    nh, nw = int(hgt.max()), int(wid.max())
    win = _gather(frames.to(p.device), y0, x0, hgt, wid, nh, nw).permute(0, 3, 1, 2)
    size = torch.full_like(hgt, PARSE_SIZE)
    my = pil_matrix(hgt, size, PARSE_SIZE, nh, "bilinear").to(p.device)
    mx = pil_matrix(wid, size, PARSE_SIZE, nw, "bilinear").to(p.device)
    x = resize_rows(win, my, mx).to(torch.float32) / 255.0  # official: PIL BILINEAR, then ToTensor
    mean = torch.tensor(IMAGENET_MEAN, device=p.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=p.device).reshape(1, 3, 1, 1)
    x = ((x - mean) / std).to(p.dtype).contiguous(memory_format=torch.channels_last)
    return model(x).argmax(1)


def _face_mask_of_windows(model: BiSeNet, frames: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
                          hgt: torch.Tensor, wid: torch.Tensor) -> torch.Tensor:
    """Official face masks [B,nh,nw] (float64 holding 0..255, zero past each window's size)."""
    labels = _labels_of_windows(model, frames, y0, x0, hgt, wid)
    face = ((labels >= FACE_LABELS[0]) & (labels <= FACE_LABELS[1])).to(torch.float64) * 255.0
    nh, nw = int(hgt.max()), int(wid.max())
    size = torch.full_like(hgt, PARSE_SIZE)
    my = pil_matrix(size, hgt, nh, PARSE_SIZE, "bicubic").to(face.device)  # PIL resize default: BICUBIC
    mx = pil_matrix(size, wid, nw, PARSE_SIZE, "bicubic").to(face.device)
    return resize_rows(face[:, None], my, mx)[:, 0]


def _chunk(batch_size: int, h: int, w: int, max_elements: int = 1 << 25) -> int:
    """Frames per chunk: at most batch_size, and 3*h*w float64 values each under max_elements (256 MB)."""
    return max(1, min(batch_size, max_elements // max(3 * h * w, 1)))


def parse_labels(model: BiSeNet, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Class labels int64 [B,512,512] of images uint8 RGB [B,H,W,3] resized to 512x512 (official)."""
    images = _check_images(images, "parse_labels")
    b, h, w = images.shape[:3]
    batch_size = _chunk(batch_size, h, w)
    out = []
    for i in range(0, b, batch_size):
        n = min(batch_size, b - i)
        z = torch.zeros(n, dtype=torch.long)
        out.append(_labels_of_windows(model, images[i:i + n], z, z, torch.full((n,), h), torch.full((n,), w)).cpu())
    return torch.cat(out) if out else torch.zeros(0, PARSE_SIZE, PARSE_SIZE, dtype=torch.long)


def parse_faces(model: BiSeNet, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Official face masks uint8 [B,H,W] of images uint8 RGB [B,H,W,3] (on the images' device).

    Labels 1..13 -> 255, others 0, at 512x512, then resized back to (H, W) with PIL bicubic, so edges
    take intermediate values exactly as the official 'L' image does.
    """
    images = _check_images(images, "parse_faces")
    b, h, w = images.shape[:3]
    batch_size = _chunk(batch_size, h, w)
    out = torch.zeros(b, h, w, dtype=torch.uint8, device=images.device)
    for i in range(0, b, batch_size):
        n = min(batch_size, b - i)
        z = torch.zeros(n, dtype=torch.long)
        m = _face_mask_of_windows(model, images[i:i + n], z, z, torch.full((n,), h), torch.full((n,), w))
        out[i:i + n] = m.to(images.device, torch.uint8)
    return out
