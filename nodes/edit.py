"""Editing nodes: load the VAE/UNet and the face parser, the mouth mask, the single-step edit, the all-in-one."""

from __future__ import annotations

import contextlib
import logging
import os

from ..joygen_core.errors import InputError
from .comfy import (
    ComfyProgress,
    DeviceMenu,
    cache_dir,
    check_interrupt,
    choices,
    devices,
    model_store,
    pick,
    sample_frames,
    stage_progress,
    stereo_like_create_video,
    temp_dir,
    torch_device,
    video_in_memory,
    video_path,
    with_ui,
)

log = logging.getLogger(__name__)

DTYPES = ["auto", "float32", "float16", "bfloat16"]
NO_UNET = "(put the joygen UNet folder in models/joygen)"
NO_VAE = "(put the sd-vae-ft-mse folder in models/joygen)"
NO_PARSER = "(put face-parse-bisent/79999_iter.pth in models/joygen)"
BLENDS = ["parsing", "landmarks", "box"]
REFERENCES = ["same frame", "fixed frame"]
SHOWN_FRAMES = 4  # frames of a result shown in the node


def _dtype(name: str, device):
    import torch

    from ..joygen_core.edit.models import default_dtype

    return default_dtype(device) if name == "auto" else getattr(torch, name)


class JoyGenLoadEditModels(DeviceMenu):
    """The sd-vae-ft-mse VAE and the JoyGen editing UNet (diffusers folders)."""

    @classmethod
    def INPUT_TYPES(cls):
        folders = model_store().list_folders()
        # The other config.json folders of the bundle (VAE, HuBERT, an HF Whisper) are not UNets.
        unets = choices([f for f in folders if not any(k in f.lower() for k in ("vae", "hubert", "whisper"))],
                        NO_UNET)
        vaes = choices([f for f in folders if "vae" in f.lower()], NO_VAE)
        return {"required": {
            "unet": (unets, {"default": pick(unets, "joygen"), "tooltip": "The JoyGen UNet folder (config.json + "
                             "diffusion_pytorch_model.safetensors; 12 input channels), or a checkpoint's unet/ "
                             "folder from `python -m train fit`."}),
            "vae": (vaes, {"default": pick(vaes, "sd-vae-ft-mse"), "tooltip": "The stabilityai/sd-vae-ft-mse "
                           "folder."}),
            "device": (devices(), {"default": "auto", "tooltip": "Where the VAE and UNet run; auto = ComfyUI's "
                                 "device."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "auto: float16 on CUDA, float32 elsewhere. bfloat16 "
                               "suits recent GPUs."}),
        }}

    RETURN_TYPES = ("JOYGEN_EDIT_MODELS",)
    RETURN_NAMES = ("edit_models",)
    FUNCTION = "load"
    CATEGORY = "JoyGen/loaders"
    DESCRIPTION = "Load the editing VAE and UNet strictly from the joygen model folder."

    def load(self, unet, vae, device="auto", dtype="auto"):
        from ..joygen_core.edit.models import load_edit_models

        store = model_store()
        dev = torch_device(device)
        return (load_edit_models(store.path(unet), store.path(vae), dev, _dtype(dtype, dev)),)


class JoyGenLoadFaceParser(DeviceMenu):
    """BiSeNet face parsing (19 classes), used to blend the edited mouth back into the frame."""

    @classmethod
    def INPUT_TYPES(cls):
        files = choices(model_store().list_files((".pth",), under="face-parse-bisent"), NO_PARSER)
        files = [f for f in files if "resnet18" not in f] or files
        return {"required": {
            "model": (files, {"default": pick(files, "face-parse-bisent/79999_iter.pth"),
                              "tooltip": "face-parse-bisent/79999_iter.pth from the official bundle."}),
            "device": (devices(), {"default": "auto", "tooltip": "Where parsing runs."}),
        }}

    RETURN_TYPES = ("JOYGEN_FACE_PARSER",)
    RETURN_NAMES = ("face_parser",)
    FUNCTION = "load"
    CATEGORY = "JoyGen/loaders"
    DESCRIPTION = "Load the BiSeNet face parser strictly (the official blending mask)."

    def load(self, model, device="auto"):
        from ..joygen_core.edit.parsing import load_face_parser

        return (load_face_parser(model_store().path(model), torch_device(device)),)


class JoyGenMouthMask:
    """The region the editor redraws (lower half of the face box), or the blend mask, as a MASK."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_track": ("JOYGEN_FACE_TRACK", {"tooltip": "From JoyGen 3DMM Reconstruct."}),
                "mode": (["region", "landmarks", "parsing", "mediapipe lips"], {"default": "region", "tooltip":
                         "region: the lower half of each face box (what the UNet regenerates); landmarks: a "
                         "feathered lower-face mask from the 68 landmarks; parsing: the official BiSeNet blend "
                         "mask (needs images and a face parser); mediapipe lips: the region narrowed to the lips "
                         "MediaPipe finds (optional mediapipe package; frames where it finds none keep the "
                         "region)."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "The frames (needed by modes parsing and mediapipe lips)."}),
                "face_parser": ("JOYGEN_FACE_PARSER", {"tooltip": "From JoyGen Load Face Parser (mode parsing)."}),
            },
        }

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    FUNCTION = "mask"
    CATEGORY = "JoyGen/edit"
    DESCRIPTION = "A MASK in frame coordinates of what JoyGen changes; frames without a face get an empty mask."

    def mask(self, face_track, mode, images=None, face_parser=None):
        import torch

        from ..joygen_core.edit.editor import blend_masks_for
        from ..joygen_core.edit.mask import regenerated_region
        from ..joygen_core.video.convert import image_to_uint8

        det = face_track.detected
        region = regenerated_region(face_track.box, det, face_track.frame_size)
        if mode == "region":
            return (region,)
        if mode == "mediapipe lips":
            from ..joygen_core.face.lips import lip_masks

            if images is None:
                raise InputError("mode mediapipe lips needs the images")
            lips, found = lip_masks(image_to_uint8(images), face_track.box, det)
            return (torch.where(found[:, None, None], lips * region, region),)
        H, W = face_track.frame_size
        out = torch.zeros(len(face_track), H, W)
        idx = det.nonzero().squeeze(1)
        if idx.numel() == 0:
            return (out,)
        if mode == "parsing":
            if images is None or face_parser is None:
                raise InputError("mode parsing needs the images and a face parser (JoyGen Load Face Parser)")
            frames = image_to_uint8(images)[idx]
        else:
            frames = torch.zeros(idx.numel(), H, W, 3, dtype=torch.uint8)
        out[idx] = blend_masks_for(frames, face_track.box[idx], face_track.lm68[idx], mode, face_parser)
        return (out,)


class JoyGenEdit:
    """The single-step UNet edit of every frame's mouth, blended back into the frames."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames, fitted to the audio's length (JoyGen Fit "
                           "Length)."}),
                "face_track": ("JOYGEN_FACE_TRACK", {"tooltip": "The face track of these frames."}),
                "edit_models": ("JOYGEN_EDIT_MODELS", {"tooltip": "From JoyGen Load Edit Models."}),
                "audio_features": ("JOYGEN_AUDIO_FEATURES", {"tooltip": "From JoyGen Audio Features, one row per "
                                   "frame."}),
                "blend": (BLENDS, {"default": "parsing", "tooltip": "How the new mouth is blended in: parsing "
                          "(official BiSeNet skin mask, needs a face parser), landmarks (feathered lower-face "
                          "mask), box (the whole redrawn half box)."}),
                "audio_only": ("BOOLEAN", {"default": False, "tooltip": "Ignore the mouth depth and edit from "
                               "the audio features alone (the depth input becomes a black map)."}),
                "reference": (REFERENCES, {"default": "same frame", "tooltip": "The reference face the UNet "
                              "copies appearance from: each frame itself (official), or one fixed frame."}),
            },
            "optional": {
                "mouth_depth": ("IMAGE", {"tooltip": "From JoyGen Render Depth (256x256 per frame)."}),
                "face_parser": ("JOYGEN_FACE_PARSER", {"tooltip": "From JoyGen Load Face Parser (blend parsing)."}),
                "blend_mask": ("MASK", {"tooltip": "A custom blend mask in frame coordinates; overrides blend."}),
                "reference_frame": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "tooltip": "The frame "
                                    "used with reference = fixed frame."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Faces per UNet/VAE batch; "
                               "lower it if memory runs out."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "run_node"
    CATEGORY = "JoyGen/edit"
    DESCRIPTION = ("JoyGen's editor: masked face + reference + mouth depth latents and the audio features -> one "
                   "UNet step -> decoded mouth, blended into the frame. Frames without a face pass unchanged.")

    def edit(self, images, face_track, edit_models, audio_features, blend="parsing", audio_only=False,
             reference="same frame", mouth_depth=None, face_parser=None, blend_mask=None, reference_frame=0,
             batch_size=8):
        from ..joygen_core.edit.editor import edit_frames
        from ..joygen_core.video.convert import image_to_uint8, uint8_to_image

        if not audio_only and mouth_depth is None:
            raise InputError("Connect mouth_depth (JoyGen Render Depth), or switch audio_only on.")
        frames = image_to_uint8(images)
        bar = stage_progress("editing", desc="JoyGen Edit")
        try:
            check_interrupt()
            out = edit_frames(edit_models, frames, face_track, audio_features,
                              None if audio_only else mouth_depth, parser=face_parser, blend=blend,
                              blend_mask=blend_mask,
                              reference_frame=int(reference_frame) if reference == "fixed frame" else -1,
                              batch_size=int(batch_size), progress=bar.for_stage("editing"))
        finally:
            bar.close()
        return (uint8_to_image(out),)

    def run_node(self, **inputs):
        """ComfyUI's entry: the edited frames, a few of them shown in the node."""
        result = self.edit(**inputs)
        return with_ui(result, result[0], "JoyGen_edit", SHOWN_FRAMES)


class JoyGenLipSync:
    """The whole job: video + speech -> lip-synced video, streamed from file with a per-video cache."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..joygen_core.video.io import ENCODERS, X264_PRESETS
        from ..joygen_core.video.length import MODES

        return {
            "required": {
                "video": ("VIDEO", {"tooltip": "The talking-face video (core Load Video). Read from its file in "
                          "chunks, so long videos never sit in memory."}),
                "audio": ("AUDIO", {"tooltip": "The driving speech (core Load Audio, or the audio of another "
                          "video)."}),
                "recon_models": ("JOYGEN_RECON_MODELS", {"tooltip": "From JoyGen Load 3DMM Models."}),
                "whisper": ("JOYGEN_WHISPER", {"tooltip": "From JoyGen Load Whisper."}),
                "edit_models": ("JOYGEN_EDIT_MODELS", {"tooltip": "From JoyGen Load Edit Models."}),
                "length_mode": (list(MODES), {"default": "pingpong", "tooltip": "How the video is fitted to the "
                                "audio's length: pingpong (official), loop, trim, hold."}),
                "blend": (BLENDS, {"default": "parsing", "tooltip": "Blend mask: parsing (official; needs the "
                          "face parser), landmarks, box."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Seed of the "
                         "audio-to-motion sample."}),
            },
            "optional": {
                "audio2motion": ("JOYGEN_A2M", {"tooltip": "From JoyGen Load Audio to Motion; leave it out for "
                                 "audio-only editing (no depth)."}),
                "face_parser": ("JOYGEN_FACE_PARSER", {"tooltip": "From JoyGen Load Face Parser (blend parsing)."}),
                "face_policy": (["largest", "track"], {"default": "largest", "tooltip": "With several faces: the "
                                "largest, or the one continuing the previous frame's."}),
                "reference_frame": ("INT", {"default": -1, "min": -1, "max": 10_000_000, "tooltip": "-1: each "
                                    "frame is its own reference (official); else this frame for all."}),
                "temperature": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.01,
                                          "tooltip": "Audio-to-motion sample scale (official 0.2)."}),
                "mouth_amp": ("FLOAT", {"default": 0.45, "min": 0.0, "max": 2.0, "step": 0.01,
                                        "tooltip": "Mouth amplitude for audio-to-motion (official 0.45)."}),
                "motion_amplitude": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                               "tooltip": "Scale the predicted mouth around its mean expression "
                                                          "(0: the mean, 1: as predicted), as JoyGen Adjust Motion."}),
                "motion_shift": ("FLOAT", {"default": 0.0, "min": -1000.0, "max": 1000.0, "step": 0.1,
                                           "tooltip": "Delay the predicted mouth by this many frames (fractional; "
                                                      "negative: earlier). A Sync Score offset of +k is undone by "
                                                      "-k."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Faces per UNet/VAE batch."}),
                "chunk_frames": ("INT", {"default": 64, "min": 8, "max": 4096, "tooltip": "Frames held in memory "
                                 "at once."}),
                "crf": ("INT", {"default": 18, "min": 0, "max": 51, "tooltip": "Quality of the result (lower is "
                        "better; 18 looks like the source). NVENC takes it as its constant quality."}),
                "preset": (list(X264_PRESETS), {"default": "medium", "tooltip": "Encoder speed against file size at "
                           "the same quality: faster presets write bigger files (x264's names; mapped to NVENC's "
                           "p1-p7)."}),
                "encoder": (list(ENCODERS), {"default": "auto", "tooltip": "auto: NVENC where a CUDA GPU with a "
                            "video encoder is present, else libx264."}),
                "pipelined": ("BOOLEAN", {"default": True, "tooltip": "Read, edit and encode at the same time "
                              "(off: one after another; the frames are the same)."}),
            },
        }

    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    FUNCTION = "run_node"
    CATEGORY = "JoyGen"
    DESCRIPTION = ("All-in-one JoyGen lip sync: 3DMM track, audio to motion, mouth depth, UNet edit and blend, "
                   "streamed from the video file; the per-video work is cached so new audio reuses it. Connect "
                   "the result to Save Video.")

    def run(self, video, audio, recon_models, whisper, edit_models, length_mode="pingpong", blend="parsing",
            seed=0, audio2motion=None, face_parser=None, face_policy="largest", reference_frame=-1,
            temperature=0.2, mouth_amp=0.45, motion_amplitude=1.0, motion_shift=0.0, batch_size=8, chunk_frames=64,
            crf=18, preset="medium", encoder="auto", pipelined=True):
        return self._run(video, audio, recon_models, whisper, edit_models, length_mode, blend, seed, audio2motion,
                         face_parser, face_policy, reference_frame, temperature, mouth_amp, motion_amplitude,
                         motion_shift, batch_size, chunk_frames, crf, preset, encoder, pipelined)[0]

    def run_node(self, **inputs):
        """ComfyUI's entry: the VIDEO, and a few frames of the result shown in the node."""
        result, frames = self._run(**inputs, show=SHOWN_FRAMES)
        return with_ui(result, frames, "JoyGen_lipsync", SHOWN_FRAMES)

    def _run(self, video, audio, recon_models, whisper, edit_models, length_mode="pingpong", blend="parsing",
             seed=0, audio2motion=None, face_parser=None, face_policy="largest", reference_frame=-1,
             temperature=0.2, mouth_amp=0.45, motion_amplitude=1.0, motion_shift=0.0, batch_size=8,
             chunk_frames=64, crf=18, preset="medium", encoder="auto", pipelined=True, show=0):
        import time

        from ..joygen_core import pipeline
        from ..joygen_core.pipeline import LipSyncOptions, PipelineModels, fingerprint
        from ..joygen_core.video.convert import audio_from_comfy

        if blend == "parsing" and face_parser is None:
            raise InputError("blend = parsing needs a face parser (JoyGen Load Face Parser), or pick landmarks/box.")
        options = LipSyncOptions(length_mode=length_mode, use_depth=audio2motion is not None, blend=blend,
                                 reference_frame=int(reference_frame), face_policy=face_policy, seed=int(seed),
                                 temperature=float(temperature), mouth_amp=float(mouth_amp),
                                 motion_amplitude=float(motion_amplitude), motion_shift=float(motion_shift),
                                 batch_size=int(batch_size), chunk_frames=int(chunk_frames), crf=int(crf),
                                 preset=preset, encoder=encoder, pipelined=bool(pipelined))
        files = {"regressor": fingerprint(recon_models.regressor), "vae": fingerprint(edit_models.vae),
                 "unet": fingerprint(edit_models.unet), "bfm": fingerprint(recon_models.bfm.meanshape)}
        if face_parser is not None:
            files["parser"] = fingerprint(face_parser)
        models = PipelineModels(recon=recon_models, whisper=whisper, edit=edit_models,
                                a2m=getattr(audio2motion, "model", None), hubert=getattr(audio2motion, "hubert", None),
                                parser=face_parser, files=files)
        work = temp_dir() / "joygen"
        check_interrupt()
        src = video_path(video, work)
        copied = src.parent == work and src.name.startswith("joygen_input_")  # an in-memory VIDEO saved for us
        # written here, read back into memory and deleted: nothing of ours stays in temp/, run finished or not
        out = work / f"joygen_lipsync_{os.getpid()}_{int(time.time() * 1000)}.mp4"
        bar = ComfyProgress(desc="JoyGen Lip Sync")
        try:
            # ComfyUI's CreateVideo writes every track as stereo AAC: the all-in-one's result sounds the same
            report = pipeline.lip_sync(src, stereo_like_create_video(audio_from_comfy(audio)), out, models, options,
                                       cache_root=cache_dir(), progress=bar)
            result = video_in_memory(out)
            frames = sample_frames(out, show) if show else None
        finally:
            bar.close()
            out.unlink(missing_ok=True)
            if copied:
                src.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                work.rmdir()  # only when empty: another run may be using it
        log.info("JoyGen Lip Sync: %d frames (%d with a face)%s; %d progress reports, %d previews", report.frames,
                 report.frames_with_face, ", per-video work from the cache" if report.cache_hit else "", bar.shown,
                 bar.previews)
        return (result,), frames


NODE_CLASS_MAPPINGS = {
    "JoyGenLoadEditModels": JoyGenLoadEditModels,
    "JoyGenLoadFaceParser": JoyGenLoadFaceParser,
    "JoyGenMouthMask": JoyGenMouthMask,
    "JoyGenEdit": JoyGenEdit,
    "JoyGenLipSync": JoyGenLipSync,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "JoyGenLoadEditModels": "JoyGen Load Edit Models",
    "JoyGenLoadFaceParser": "JoyGen Load Face Parser",
    "JoyGenMouthMask": "JoyGen Mouth Mask",
    "JoyGenEdit": "JoyGen Edit",
    "JoyGenLipSync": "JoyGen Lip Sync",
}
