"""The single-step editor: face crops -> VAE latents -> one UNet forward at timestep 0 -> decoded faces.

Official (JoyGen ``inference_joygen.py`` with MuseTalk's VAE wrapper), per frame:

- face crop: the frame cut at the integer face box (PIL crop: zero outside the frame), resized to
  256x256 with ``cv2.INTER_LANCZOS4``;
- masked target: the crop with its lower half set to black *before* the [-1,1] normalisation;
  reference: the unmasked crop (the same frame at inference); mouth depth: the 256x256 map as a
  3-channel image (all black without depth);
- each encoded to ``latent * 0.18215``; the UNet input is concat(masked, reference, depth) [B,12,32,32],
  the audio tokens [B,50,384] (positional encoding already added) its ``encoder_hidden_states``;
- output latent / 0.18215 -> VAE decode -> ``(x/2 + 0.5).clamp(0,1)``, ``*255``, rounded to uint8.

Differences on purpose: the VAE encodes with the posterior mean (the official draws an unseeded sample),
so runs repeat; no JPEG round trips; whole batches at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import InputError
from .models import EditModels

FACE_SIZE = 256


def face_crops(frames: torch.Tensor, boxes: torch.Tensor, size: int = FACE_SIZE) -> torch.Tensor:
    """uint8 frames [B,H,W,3] cut at integer boxes [B,4] (x1,y1,x2,y2; zero outside) -> uint8 [B,size,size,3].

    Official: ``PIL.Image.crop(box)`` then ``cv2.resize(.., INTER_LANCZOS4)``. An empty box gives black.
    """
    import cv2

    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    arr = frames.cpu().numpy()
    H, W = arr.shape[1:3]
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        w, h = x2 - x1, y2 - y1
        if w <= 0 or h <= 0:
            continue
        crop = np.zeros((h, w, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
        if sx2 > sx1 and sy2 > sy1:
            crop[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = arr[i, sy1:sy2, sx1:sx2]
        out[i] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LANCZOS4)
    return torch.from_numpy(out)


def to_vae_input(images: torch.Tensor, *, lower_half_black: bool = False) -> torch.Tensor:
    """uint8 [B,S,S,3] (or [B,S,S] gray, e.g. depth) -> float [B,3,S,S] in [-1,1]; optionally the lower half black.

    Official: ``x / 255``, times the upper-half mask, then ``Normalize(0.5, 0.5)`` (black -> -1).
    """
    x = images.float() / 255.0
    if x.ndim == 3:
        x = x[..., None].expand(*x.shape, 3)
    x = x.permute(0, 3, 1, 2).contiguous()
    if lower_half_black:
        x[:, :, x.shape[2] // 2:] = 0.0
    return x * 2.0 - 1.0


def lower_half_mask(size: int = FACE_SIZE) -> torch.Tensor:
    """[1,1,S,S] float: 1 where the editor regenerates (the lower half of the face crop)."""
    m = torch.zeros(1, 1, size, size)
    m[..., size // 2:, :] = 1.0
    return m


def _vae_layout(models: EditModels, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the models' dtype on their device (channels-last when the models are)."""
    x = x.to(models.device, models.dtype, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if getattr(models, "channels_last", False) else x


@torch.no_grad()
def encode_on_device(models: EditModels, images: torch.Tensor) -> torch.Tensor:
    """[-1,1] images [B,3,S,S] (any device) -> scaled latents [B,4,S/8,S/8] in the models' dtype, left on their
    device: no host synchronisation (the pipeline's batch loop)."""
    return models.vae.encode(_vae_layout(models, images)).latent_dist.mean * models.latent_scale


@torch.no_grad()
def decode_on_device(models: EditModels, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B,4,h,w] -> uint8 faces [B,8h,8w,3] (official rounding), left on the models' device."""
    img = models.vae.decode(_vae_layout(models, latents) / models.latent_scale).sample.float()
    img = (img / 2 + 0.5).clamp(0, 1)
    return (img.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def encode(models: EditModels, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """[-1,1] images [B,3,S,S] -> scaled latents [B,4,S/8,S/8] (posterior mean), float32 on the CPU."""
    out = [encode_on_device(models, images[i:i + batch_size]).float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    if not out:
        return torch.zeros(0, 4, images.shape[2] // 8, images.shape[3] // 8)
    return torch.cat(out)


@torch.no_grad()
def decode(models: EditModels, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Scaled latents [B,4,h,w] -> uint8 faces [B,8h,8w,3] (official rounding)."""
    out = [decode_on_device(models, latents[i:i + batch_size]).cpu() for i in range(0, latents.shape[0], batch_size)]
    if not out:
        return torch.zeros(0, latents.shape[2] * 8, latents.shape[3] * 8, 3, dtype=torch.uint8)
    return torch.cat(out)


def unet_input(masked: torch.Tensor, reference: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """The 12-channel UNet input: concat(masked target, reference, mouth depth) latents."""
    return torch.cat([masked, reference, depth], dim=1)


def predict_latents(unet: torch.nn.Module, latent_in: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """One UNet forward at timestep 0 (JoyGen is a single-step editor), in the UNet's dtype and device."""
    p = next(unet.parameters())
    t = torch.zeros(latent_in.shape[0], device=p.device, dtype=torch.long)
    x = latent_in.to(p.device, p.dtype, non_blocking=True)
    if getattr(unet, "joygen_channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    return unet(x, t, encoder_hidden_states=audio.to(p.device, p.dtype, non_blocking=True)).sample


@torch.no_grad()
def edit_batch(models: EditModels, masked: torch.Tensor, reference: torch.Tensor, depth: torch.Tensor,
               audio: torch.Tensor) -> torch.Tensor:
    """One batch, all on the models' device with no host synchronisation: latents [B,4,32,32] x3 (``depth`` may
    be [1,4,32,32], shared) + audio features [B,50,384] -> edited uint8 faces [B,256,256,3] on the device."""
    n = masked.shape[0]
    dev = lambda t: t.to(models.device, models.dtype, non_blocking=True)  # noqa: E731
    d = dev(depth)
    if d.shape[0] != n:
        d = d.expand(n, -1, -1, -1)
    pred = predict_latents(models.unet, unet_input(dev(masked), dev(reference), d), audio)
    return decode_on_device(models, pred)


@torch.no_grad()
def edit_faces(models: EditModels, masked: torch.Tensor, reference: torch.Tensor, depth: torch.Tensor,
               audio: torch.Tensor, batch_size: int = 8,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Latents [B,4,32,32] x3 + audio features [B,50,384] -> edited uint8 faces [B,256,256,3].

    ``depth`` may be [1,4,32,32] (one latent for every frame, e.g. the black map of audio-only editing).
    """
    n = masked.shape[0]
    if audio.shape[0] != n or reference.shape[0] != n:
        raise InputError(f"edit_faces: {n} masked latents, {reference.shape[0]} reference latents and "
                         f"{audio.shape[0]} audio feature rows must match")
    faces = []
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        d = depth[sl] if depth.shape[0] == n else depth
        faces.append(edit_batch(models, masked[sl], reference[sl], d, audio[sl]).cpu())
        if progress is not None:
            progress(min(i + batch_size, n), n)
    if not faces:
        return torch.zeros(0, FACE_SIZE, FACE_SIZE, 3, dtype=torch.uint8)
    return torch.cat(faces)


def black_depth_latent(models: EditModels, size: int = FACE_SIZE) -> torch.Tensor:
    """The depth latent of audio-only editing: the encoding of an all-black image (official), [1,4,32,32]."""
    return encode(models, to_vae_input(torch.zeros(1, size, size, 3, dtype=torch.uint8)))


def reference_latents(models: EditModels, crops: torch.Tensor, batch_size: int = 8
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (masked target, reference) latents of uint8 face crops [B,256,256,3]: the per-video work."""
    masked = encode(models, to_vae_input(crops, lower_half_black=True), batch_size)
    return masked, encode(models, to_vae_input(crops), batch_size)


def depth_latents(models: EditModels, mouth_depth: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Mouth depth maps [B,256,256] (0..1 floats, the depth node's output, or uint8) -> latents [B,4,32,32]."""
    d = mouth_depth
    if d.ndim == 4:  # IMAGE [B,H,W,C]: the channels are copies
        d = d[..., 0]
    if d.dtype != torch.uint8:
        d = (d.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if d.shape[-2:] != (FACE_SIZE, FACE_SIZE):
        raise InputError(f"mouth depth must be {FACE_SIZE}x{FACE_SIZE} (JoyGen Render Depth output); got "
                         f"{tuple(d.shape[-2:])}")
    return encode(models, to_vae_input(d), batch_size)


BLEND_MODES = ("parsing", "landmarks", "box")


def blend_masks_for(frames: torch.Tensor, boxes: torch.Tensor, lm68: torch.Tensor | None, mode: str,
                    parser=None) -> torch.Tensor:
    """Blend masks [B,H,W] in 0..1 for uint8 frames: BiSeNet parsing (official), feathered landmarks, or the
    plain regenerated half box."""
    if mode == "parsing":
        from .blend import blend_masks

        if parser is None:
            raise InputError("blend mode 'parsing' needs the BiSeNet face parser (face-parse-bisent/79999_iter.pth)")
        return blend_masks(parser, frames, boxes)
    if mode == "landmarks":
        from .blend import landmark_mask

        if lm68 is None:
            raise InputError("blend mode 'landmarks' needs the face track's 68 landmarks")
        return landmark_mask(lm68, boxes, tuple(frames.shape[1:3]))
    if mode == "box":
        from .mask import regenerated_region

        return regenerated_region(boxes, torch.ones(len(boxes), dtype=torch.bool), tuple(frames.shape[1:3]))
    raise InputError(f"Unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODES)}")


def edit_chunk(models: EditModels, frames: torch.Tensor, boxes: torch.Tensor, masked: torch.Tensor,
               reference: torch.Tensor, depth: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor,
               batch_size: int = 8) -> torch.Tensor:
    """Edit frames that all hold a face: UNet + decode, then paste through ``masks`` -> new uint8 frames."""
    from .blend import paste_faces

    faces = edit_faces(models, masked, reference, depth, audio, batch_size)
    return paste_faces(frames, faces, boxes, masks)


def edit_frames(models: EditModels, frames: torch.Tensor, track, audio_features: torch.Tensor,
                mouth_depth: torch.Tensor | None = None, *, parser=None, blend: str = "parsing",
                blend_mask: torch.Tensor | None = None, reference_frame: int = -1, batch_size: int = 8,
                progress: Callable[..., None] | None = None) -> torch.Tensor:
    """Edit uint8 frames [T,H,W,3] so the mouth follows the audio -> uint8 frames [T,H,W,3].

    ``track``: the FaceTrack of these frames; ``audio_features`` [T,50,384]; ``mouth_depth`` [T,256,256]
    (None: audio-only editing with the black depth map). ``reference_frame`` -1 uses each frame as its own
    reference (official), else that frame's crop for all. ``blend_mask`` [T,H,W] overrides ``blend``.
    Frames without a face are returned unchanged. ``progress(done, total, preview=...)`` after each batch of
    faces; the preview builds the latest edited frame.
    """
    T = frames.shape[0]
    if len(track) != T or audio_features.shape[0] != T:
        raise InputError(f"{T} frames, a face track of {len(track)} and audio features for "
                         f"{audio_features.shape[0]} frames: fit them to the same length first (JoyGen Fit Length)")
    if mouth_depth is not None and mouth_depth.shape[0] != T:
        raise InputError(f"{T} frames but {mouth_depth.shape[0]} mouth depth maps")
    out = frames.clone()
    todo = track.detected.nonzero().squeeze(1)
    if todo.numel() == 0:
        return out
    ref_lat = None
    if reference_frame >= 0:
        if not 0 <= reference_frame < T or not bool(track.detected[reference_frame]):
            raise InputError(f"reference frame {reference_frame} has no face (or is out of range)")
        crop = face_crops(frames[reference_frame:reference_frame + 1], track.box[reference_frame:reference_frame + 1])
        ref_lat = encode(models, to_vae_input(crop))
    black = black_depth_latent(models) if mouth_depth is None else None
    step = max(batch_size, 1)  # one UNet batch per report: progress and interrupts at batch granularity
    for k in range(0, todo.numel(), step):
        idx = todo[k:k + step]
        f, boxes = frames[idx], track.box[idx]
        crops = face_crops(f, boxes)
        masked = encode(models, to_vae_input(crops, lower_half_black=True), batch_size)
        ref = encode(models, to_vae_input(crops), batch_size) if ref_lat is None else ref_lat.expand(len(idx), -1,
                                                                                                     -1, -1)
        depth = black if mouth_depth is None else depth_latents(models, mouth_depth[idx], batch_size)
        masks = (blend_mask[idx].float() if blend_mask is not None
                 else blend_masks_for(f, boxes, track.lm68[idx], blend, parser))
        out[idx] = edit_chunk(models, f, boxes, masked, ref, depth, audio_features[idx], masks, batch_size)
        if progress is not None:
            j = int(idx[-1])
            progress(min(k + step, todo.numel()), todo.numel(), preview=lambda j=j: out[j].numpy())
    return out
