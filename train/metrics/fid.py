"""Fréchet Inception Distance with the standard FID Inception (the TF 2015 graph ported to PyTorch).

The network is torchvision's ``inception_v3`` (1008 classes, no auxiliary head) with the blocks that
differ in the TensorFlow graph used by every published FID swapped in, loaded from the ported weight
file ``pt_inception-2015-12-05-6726825d.pth`` (the file pytorch-fid downloads). Conventions reproduced
from pytorch-fid so numbers compare with papers: RGB in [0, 1] -> bilinear resize to 299x299
(``align_corners=False``, no antialiasing) -> scaled to [-1, 1]; features are the 2048-d output of the
final average pool; statistics are the mean and the unbiased covariance; the distance uses
``scipy.linalg.sqrtm`` with a 1e-6 diagonal offset when the covariance product is singular.
For sets smaller than the 2048 feature dimensions the same distance is computed exactly (and in a
fraction of a second) from the features themselves, see :func:`frechet_distance_features`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception

from joygen_core.errors import ModelFileError
from joygen_core.weights import check_state_dict, load_checkpoint

log = logging.getLogger(__name__)

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SOURCE = ("github.com/mseitzer/pytorch-fid releases (fid_weights/" + WEIGHTS_NAME
                  + "), the TF inception-2015-12-05 graph ported to PyTorch")
FEATURE_DIM = 2048
INPUT_SIZE = 299


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's 3x3 'SAME' average pool divides by the number of real pixels, not by 9 (padding excluded).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(tv_inception.InceptionA):
    """Mixed_5b-d as in the TF graph: the pool branch excludes padding from its average."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class _InceptionC(tv_inception.InceptionC):
    """Mixed_6b-e as in the TF graph (padding-excluding average pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class _InceptionE(tv_inception.InceptionE):
    """Mixed_7b / 7c as in the TF graph: 7b pools with a padding-excluding average, 7c with a 3x3 max
    pool (the TF graph's quirk, kept because every published FID has it)."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """The FID Inception network: ``forward(images [N,3,H,W] RGB float in [0,1]) -> features [N,2048]``.

    Parameter names are torchvision's (``Conv2d_1a_3x3.conv.weight`` ... ``fc.bias``), which are also
    the names in the ported weight file; ``fc`` (1008 classes) is loaded but not used.
    """

    def __init__(self) -> None:
        super().__init__()
        net = tv_inception.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b = _InceptionA(192, pool_features=32)
        net.Mixed_5c = _InceptionA(256, pool_features=64)
        net.Mixed_5d = _InceptionA(288, pool_features=64)
        net.Mixed_6b = _InceptionC(768, channels_7x7=128)
        net.Mixed_6c = _InceptionC(768, channels_7x7=160)
        net.Mixed_6d = _InceptionC(768, channels_7x7=160)
        net.Mixed_6e = _InceptionC(768, channels_7x7=192)
        net.Mixed_7b = _InceptionE(1280, max_pool=False)
        net.Mixed_7c = _InceptionE(2048, max_pool=True)
        # Register torchvision's layers directly so the state-dict keys are the file's keys.
        for name, child in net.named_children():
            if child is not None and name not in ("AuxLogits", "dropout"):
                self.add_module(name, child)
        self._layers = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                        "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                        "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in self._layers:
            x = getattr(self, name)(x)
        return x.flatten(1)


def _fill_bn_counters(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm ``num_batches_tracked`` counters are absent from files saved before PyTorch 0.4 and are
    never read in eval mode: take the module's own where the file has none (as ``load_state_dict`` does)."""
    state = dict(state)
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    return state


def load_fid_inception(path: Path | str, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> FIDInception:
    """The FID Inception with the ported TF weights from ``path`` (checked strictly), in eval mode."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelFileError(f"{path} is not a state dict (got {type(state).__name__}); expected {WEIGHTS_NAME} "
                             f"from {WEIGHTS_SOURCE}.")
    if any(k.startswith("AuxLogits.") for k in state) or getattr(state.get("fc.weight"), "shape", (0,))[0] == 1000:
        raise ModelFileError(
            f"{path} looks like torchvision's ImageNet Inception-v3, not the FID Inception: its features differ "
            f"and its FID would not compare with published numbers. Use {WEIGHTS_NAME} from {WEIGHTS_SOURCE}.")
    model = FIDInception()
    state = _fill_bn_counters(state, model)
    check_state_dict(state, model, path, what=f"FID Inception ({WEIGHTS_NAME})")
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


@torch.inference_mode()
def inception_features(model: FIDInception, frames: torch.Tensor | np.ndarray, batch_size: int = 50) -> torch.Tensor:
    """2048-d pool features (float64, CPU) of uint8 RGB frames [N,H,W,3], ``batch_size`` frames per pass.

    uint8 -> /255 like pytorch-fid's ToTensor; frames of any size (resized to 299 inside the model).
    """
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"inception_features wants uint8 RGB frames [N,H,W,3]; got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    p = next(model.parameters())
    out = []
    for start in range(0, frames.shape[0], batch_size):
        x = frames[start:start + batch_size].to(p.device).permute(0, 3, 1, 2).to(p.dtype) / 255.0
        out.append(model(x).to("cpu", torch.float64))
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)


class GaussianStats:
    """Running mean and covariance of feature batches, in float64.

    Sums are taken about a shift (the first batch's mean) so the covariance does not lose digits to
    cancellation; ``mean`` / ``cov`` equal ``np.mean`` / ``np.cov(rowvar=False)`` of all rows seen.
    The rows themselves are kept while there are at most ``keep`` of them (for the exact small-set
    distance, :func:`frechet_distance_features`).
    """

    def __init__(self, dim: int = FEATURE_DIM, keep: int = 4096):
        self.dim = dim
        self.keep = keep
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(dim)
        self._outer = np.zeros((dim, dim))
        self._rows: list[np.ndarray] | None = []

    def update(self, features: torch.Tensor | np.ndarray) -> GaussianStats:
        f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must be [n, {self.dim}]; got {f.shape}")
        if f.shape[0] == 0:
            return self
        if self._shift is None:
            self._shift = f.mean(axis=0)
        c = f - self._shift
        self._sum += c.sum(axis=0)
        self._outer += c.T @ c
        self.count += f.shape[0]
        if self._rows is not None:
            self._rows = self._rows + [f] if self.count <= self.keep else None
        return self

    @property
    def features(self) -> np.ndarray | None:
        """All rows seen [count, dim], or None once more than ``keep`` were seen."""
        return None if self._rows is None or not self._rows else np.concatenate(self._rows)

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no features were accumulated")
        return self._shift + self._sum / self.count

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples; got {self.count}")
        m = self._sum / self.count
        return (self._outer - self.count * np.outer(m, m)) / (self.count - 1)


@dataclass(frozen=True)
class FrechetResult:
    """The distance and how it was reached: ``method`` 'sqrtm' or 'features', whether the eps offset
    was needed, the largest imaginary part dropped."""

    value: float
    method: str = "sqrtm"
    offset_used: bool = False
    max_imag: float = 0.0


def _sqrtm(a: np.ndarray) -> np.ndarray:
    import warnings

    from scipy import linalg

    with warnings.catch_warnings():
        # A singular product is expected with few samples; non-finite results are handled by the caller.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> FrechetResult:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` between two Gaussians (the reference FID route).

    As in the reference FID code: when ``sqrtm(S1 S2)`` is not finite (a singular product) ``eps * I``
    is added to both covariances; a small imaginary part from round-off is dropped, a large one
    (diagonal > 1e-3) is an error. Costs a 2048x2048 Schur decomposition (tens of seconds on a CPU).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape} / {mu2.shape}, covariances {s1.shape} / "
                         f"{s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    offset_used = not np.isfinite(covmean).all()
    if offset_used:
        log.warning("FID: the covariance product is singular; adding %g to the covariance diagonals.", eps)
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    max_imag = 0.0
    if np.iscomplexobj(covmean):
        max_imag = float(np.abs(covmean.imag).max())
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrt(S1 S2) has a large imaginary component ({max_imag:g}); the statistics "
                             "are degenerate (too few frames?)")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    return FrechetResult(value=value, method="sqrtm", offset_used=offset_used, max_imag=max_imag)


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> FrechetResult:
    """The same distance between the Gaussians fitted to two feature sets [n1, d], [n2, d], exactly.

    With ``A``, ``B`` the centred rows over ``sqrt(n - 1)``, ``S1 = A^T A`` and ``S2 = B^T B``, and the
    nonzero eigenvalues of ``S1 S2`` are the squared singular values of ``A B^T``: so
    ``Tr sqrt(S1 S2)`` is the nuclear norm of the small ``n1 x n2`` matrix ``A B^T``. No square root of
    a singular 2048x2048 product (the usual case with fewer frames than dimensions), no eps offset.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"need two feature sets [n>=2, d] of one width; got {f1.shape} and {f2.shape}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a = (f1 - mu1) / np.sqrt(len(f1) - 1)
    b = (f2 - mu2) / np.sqrt(len(f2) - 1)
    nuclear = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2 * nuclear)
    return FrechetResult(value=value, method="features")


FID_METHODS = ("auto", "sqrtm", "features")


def frame_statistics(model: FIDInception, chunks: Iterable[torch.Tensor | np.ndarray], batch_size: int = 50
                     ) -> GaussianStats:
    """Mean and covariance of the Inception features of every frame in ``chunks`` (uint8 [n,H,W,3] each)."""
    stats = GaussianStats()
    for chunk in chunks:
        stats.update(inception_features(model, chunk, batch_size))
    return stats


def fid_score(stats_a: GaussianStats, stats_b: GaussianStats, method: str = "auto", eps: float = 1e-6) -> FrechetResult:
    """FID between two accumulated feature sets.

    ``method``: 'sqrtm' the reference route (:func:`frechet_distance`); 'features' the exact small-set
    route (:func:`frechet_distance_features`, needs both sets' rows kept); 'auto' takes 'features' when
    both sets hold fewer frames than feature dimensions (where the covariances are singular and
    ``sqrtm`` is least accurate), else 'sqrtm' (so large sets get exactly the reference computation).
    """
    if method not in FID_METHODS:
        raise ValueError(f"method must be one of {FID_METHODS}; got {method!r}")
    fa, fb = stats_a.features, stats_b.features
    small = fa is not None and fb is not None and max(len(fa), len(fb)) < stats_a.dim
    if method == "features" or (method == "auto" and small):
        if fa is None or fb is None:
            raise ValueError(f"the 'features' route needs every row kept; more than {stats_a.keep} were seen")
        return frechet_distance_features(fa, fb)
    return frechet_distance(stats_a.mean, stats_a.cov, stats_b.mean, stats_b.cov, eps)
