"""Audio nodes: Whisper features for the editor and audio-driven expression coefficients (audio to motion)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .comfy import DeviceMenu, check_interrupt, choices, devices, model_store, pick, stage_progress, torch_device

log = logging.getLogger(__name__)

NO_WHISPER = "(put whisper/tiny.pt in models/joygen)"
NO_A2M = "(put audio2motion/.../model_ckpt_steps_400000.ckpt in models/joygen)"
NO_HUBERT = "(put the audio2motion/hubert folder in models/joygen)"


@dataclass
class A2MHandle:
    """The JOYGEN_A2M value: the flow VAE and the HuBERT model that feeds it."""

    model: Any
    hubert: Any
    device: Any


def _whisper_choices() -> list[str]:
    store = model_store()
    files = [n for n in store.list_files((".pt", ".pth", ".bin", ".safetensors")) if "whisper" in n.lower()]
    folders = [f for f in store.list_folders() if "whisper" in f.lower()]
    return choices(sorted(set(files) | set(folders)), NO_WHISPER)



def _frame_count(audio_clip, fps: float, frame_count: int) -> int:
    from ..joygen_core.video.length import frames_for_duration

    return int(frame_count) if frame_count and frame_count > 0 else frames_for_duration(audio_clip.duration, fps)


def _audio16k(audio: dict, for_motion: bool = False):
    """The clip and the 16 kHz signal the official scripts feed Whisper (mono) or audio-to-motion (channels)."""
    from ..joygen_core.audio.prepare import to_mono_16k, to_motion_16k
    from ..joygen_core.video.convert import audio_from_comfy

    clip = audio_from_comfy(audio)
    return clip, (to_motion_16k if for_motion else to_mono_16k)(clip.waveform, clip.sample_rate)


class JoyGenLoadWhisper(DeviceMenu):
    """Load the Whisper-tiny encoder whose features condition the editing UNet."""

    @classmethod
    def INPUT_TYPES(cls):
        names = _whisper_choices()
        return {"required": {
            "model": (names, {"default": pick(names, "whisper/tiny.pt"),
                              "tooltip": "OpenAI-format whisper/tiny.pt (official bundle) or an HF openai/whisper-tiny "
                                         "folder, inside models/joygen."}),
            "device": (devices(), {"default": "auto", "tooltip": "Where the encoder runs; auto = ComfyUI's device."}),
        }}

    RETURN_TYPES = ("JOYGEN_WHISPER",)
    RETURN_NAMES = ("whisper",)
    FUNCTION = "load"
    CATEGORY = "JoyGen/loaders"
    DESCRIPTION = "Whisper-tiny encoder (OpenAI tiny.pt or HF folder) for the JoyGen audio features."

    def load(self, model, device="auto"):
        import torch

        from ..joygen_core.audio.whisper import load_whisper_encoder

        dev = torch_device(device)
        dtype = torch.float16 if dev.type == "cuda" else torch.float32  # official: fp16 on GPU
        return (load_whisper_encoder(model_store().path(model), dev, dtype),)


class JoyGenLoadAudio2Motion(DeviceMenu):
    """Load the audio-to-motion flow VAE and its HuBERT feature model."""

    @classmethod
    def INPUT_TYPES(cls):
        store = model_store()
        ckpts = choices(store.list_files((".ckpt",), under="audio2motion"), NO_A2M)
        huberts = choices([f for f in store.list_folders() if "hubert" in f.lower()], NO_HUBERT)
        return {"required": {
            "checkpoint": (ckpts, {"default": pick(ckpts, "audio2motion/240210_real3dportrait_orig/audio2secc_vae/"
                                                           "model_ckpt_steps_400000.ckpt"),
                                   "tooltip": "Real3DPortrait audio2secc_vae checkpoint; its config.yaml must sit "
                                              "beside it."}),
            "hubert": (huberts, {"default": pick(huberts, "audio2motion/hubert"),
                                 "tooltip": "HF folder of facebook/hubert-large-ls960-ft (audio2motion/hubert)."}),
            "device": (devices(), {"default": "auto", "tooltip": "Where HuBERT and the flow VAE run."}),
        }}

    RETURN_TYPES = ("JOYGEN_A2M",)
    RETURN_NAMES = ("audio2motion",)
    FUNCTION = "load"
    CATEGORY = "JoyGen/loaders"
    DESCRIPTION = "Audio-to-expression model (HuBERT + pitch -> flow VAE) from the official files."

    def load(self, checkpoint, hubert, device="auto"):
        from ..joygen_core.audio.hubert import load_hubert
        from ..joygen_core.motion.a2m import load_a2m

        store = model_store()
        dev = torch_device(device)
        return (A2MHandle(load_a2m(store.path(checkpoint), device=dev), load_hubert(store.path(hubert), dev), dev),)


class JoyGenAudioFeatures:
    """Whisper features per video frame: the audio conditioning of the editing UNet."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "whisper": ("JOYGEN_WHISPER", {"tooltip": "From JoyGen Load Whisper."}),
            "audio": ("AUDIO", {"tooltip": "Driving speech; any sample rate and channel count."}),
            "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                              "tooltip": "Frame rate of the video being edited."}),
            "frame_count": ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                                    "tooltip": "Number of video frames to make features for (0: the audio's length)."}),
        }}

    RETURN_TYPES = ("JOYGEN_AUDIO_FEATURES", "INT")
    RETURN_NAMES = ("audio_features", "frame_count")
    FUNCTION = "run"
    CATEGORY = "JoyGen/audio"
    DESCRIPTION = "Whisper-tiny encoder states, 10 rows (200 ms) around each frame -> [frames, 50, 384]."

    def run(self, whisper, audio, fps, frame_count=0):
        from ..joygen_core.audio.whisper import whisper_features

        clip, wav = _audio16k(audio)
        n = _frame_count(clip, fps, frame_count)
        bar = stage_progress("audio features", desc="JoyGen Audio Features")
        try:
            check_interrupt()
            feats = whisper_features(whisper, wav, float(fps), n, progress=bar.for_stage("audio features"))
        finally:
            bar.close()
        return (feats, n)


class JoyGenAudio2Motion:
    """Expression coefficients per video frame from speech (drives the mouth depth)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio2motion": ("JOYGEN_A2M", {"tooltip": "From JoyGen Load Audio to Motion."}),
            "audio": ("AUDIO", {"tooltip": "Driving speech; any sample rate and channel count."}),
            "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                              "tooltip": "Frame rate of the video being edited."}),
            "frame_count": ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                                    "tooltip": "Number of frames of motion to return (0: the audio's length)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                             "tooltip": "Seed of the prior sample; the same seed gives the same motion."}),
            "temperature": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.01,
                                      "tooltip": "Scale of the prior sample: higher is more varied, less accurate "
                                                 "(official 0.2)."}),
            "mouth_amp": ("FLOAT", {"default": 0.45, "min": 0.0, "max": 2.0, "step": 0.01,
                                    "tooltip": "Mouth amplitude the model is conditioned on (official 0.45)."}),
        }}

    RETURN_TYPES = ("JOYGEN_MOTION", "INT")
    RETURN_NAMES = ("motion", "frame_count")
    FUNCTION = "run"
    CATEGORY = "JoyGen/audio"
    DESCRIPTION = "HuBERT + pitch -> flow VAE -> 64 BFM expression coefficients per frame at the video's fps."

    def run(self, audio2motion, audio, fps, frame_count=0, seed=0, temperature=0.2, mouth_amp=0.45):
        from ..joygen_core.motion.a2m import audio_to_motion

        clip, wav = _audio16k(audio, for_motion=True)
        n = _frame_count(clip, fps, frame_count)
        bar = stage_progress("audio to motion", desc="JoyGen Audio to Motion")
        try:
            check_interrupt()
            motion = audio_to_motion(audio2motion.model, audio2motion.hubert, wav, float(fps), n, seed=int(seed),
                                     temperature=float(temperature), mouth_amp=float(mouth_amp),
                                     progress=bar.for_stage("audio to motion"))
        finally:
            bar.close()
        return (motion, n)


NODE_CLASS_MAPPINGS = {
    "JoyGenLoadWhisper": JoyGenLoadWhisper,
    "JoyGenLoadAudio2Motion": JoyGenLoadAudio2Motion,
    "JoyGenAudioFeatures": JoyGenAudioFeatures,
    "JoyGenAudio2Motion": JoyGenAudio2Motion,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "JoyGenLoadWhisper": "JoyGen Load Whisper",
    "JoyGenLoadAudio2Motion": "JoyGen Load Audio to Motion",
    "JoyGenAudioFeatures": "JoyGen Audio Features",
    "JoyGenAudio2Motion": "JoyGen Audio to Motion",
}
