"""Motion and measurement nodes: motion from a video's face track, motion adjustments, a plot of the mouth
opening, and the lip-sync score (LSE-D / LSE-C / offset) with the evaluation's SyncNet."""

from __future__ import annotations

import logging

from ..joygen_core.errors import InputError
from .comfy import DeviceMenu, check_interrupt, choices, devices, model_store, pick, stage_progress, torch_device

log = logging.getLogger(__name__)

NO_SYNCNET = "(put syncnet/syncnet_v2.model in models/joygen)"


def _info(motion) -> str:
    notes = (motion.meta or {}).get("notes") or []
    head = f"{len(motion)} frames at {motion.fps:g} fps ({len(motion) / motion.fps:.2f} s)"
    return "\n".join([head] + [f"- {n}" for n in notes]) if notes else head + "\n- unchanged"


class JoyGenMotionFromVideo:
    """A video's own mouth as motion: the expression coefficients of its face track, re-timed."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_track": ("JOYGEN_FACE_TRACK", {"tooltip": "Face track of the driver video (JoyGen 3DMM "
                               "Reconstruct): its 64 expression coefficients per frame become the motion."}),
                "target_fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                         "tooltip": "Frame rate of the video the motion will drive (the edited "
                                                    "video's fps)."}),
                "frame_count": ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                                        "tooltip": "Frames of motion to return (0: the track's duration at "
                                                   "target_fps). Past the track's end its last frame is held."}),
            },
            "optional": {
                "source_fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "step": 0.001,
                                         "tooltip": "Frame rate of the face track (0: the fps stored in the track "
                                                    "by JoyGen 3DMM Reconstruct, else 25)."}),
            },
        }

    RETURN_TYPES = ("JOYGEN_MOTION", "INT", "STRING")
    RETURN_NAMES = ("motion", "frame_count", "info")
    FUNCTION = "run"
    CATEGORY = "JoyGen/motion"
    DESCRIPTION = ("Expression coefficients of a face track as JOYGEN_MOTION, re-timed to the target fps and length "
                   "by linear interpolation in time; frames without a face are interpolated from their neighbours "
                   "(edges hold the nearest face). info says what was re-timed or filled.")

    def run(self, face_track, target_fps, frame_count=0, source_fps=0.0):
        from ..joygen_core.motion.adjust import motion_from_track

        motion = motion_from_track(face_track, float(source_fps) or None, int(frame_count) or None,
                                   float(target_fps))
        return (motion, len(motion), _info(motion))


class JoyGenAdjustMotion:
    """Mouth amplitude, temporal smoothing, time shift and a weighted mix of two motions."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "motion": ("JOYGEN_MOTION", {"tooltip": "Expression coefficients per frame (JoyGen Audio to Motion or "
                           "JoyGen Motion from Video)."}),
                "amplitude": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                        "tooltip": "Mouth amplitude: scales each frame's deviation from the "
                                                   "motion's mean expression (0: the mean in every frame, "
                                                   "1: unchanged, above 1: livelier)."}),
                "smoothing_hz": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 60.0, "step": 0.1,
                                           "tooltip": "Zero-phase low-pass cutoff in Hz (the same at any fps; "
                                                      "0: off). About 4-6 Hz calms jitter, 2 Hz is slow."}),
                "shift_frames": ("FLOAT", {"default": 0.0, "min": -1000.0, "max": 1000.0, "step": 0.1,
                                           "tooltip": "Delay the mouth by this many frames (fractional ok; "
                                                      "negative: earlier). Edges hold the first / last frame. To "
                                                      "fix a Sync Score offset of +k, shift by -k."}),
            },
            "optional": {
                "motion_b": ("JOYGEN_MOTION", {"tooltip": "A second motion to mix in, re-timed to the first "
                             "one's fps and length when they differ."}),
                "mix": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "Weight of motion_b in the mix (0: only motion, 1: only motion_b); "
                                             "ignored without motion_b."}),
            },
        }

    RETURN_TYPES = ("JOYGEN_MOTION", "STRING")
    RETURN_NAMES = ("motion", "info")
    FUNCTION = "run"
    CATEGORY = "JoyGen/motion"
    DESCRIPTION = ("Mix with a second motion, then scale the mouth amplitude, low-pass filter over time and shift; "
                   "the defaults leave the motion unchanged. info says what was done.")

    def run(self, motion, amplitude=1.0, smoothing_hz=0.0, shift_frames=0.0, motion_b=None, mix=0.5):
        from ..joygen_core.motion.adjust import adjust_motion

        out = adjust_motion(motion, amplitude=float(amplitude), smoothing_hz=float(smoothing_hz),
                            shift_frames=float(shift_frames), other=motion_b, mix_weight=float(mix))
        return (out, _info(out))


def _label(motion, fallback: str) -> str:
    meta = motion.meta or {}
    adjusted = ", adjusted" if meta.get("adjusted") else ""
    if meta.get("source") == "face track":
        return f"{fallback}: from video{adjusted}"
    if "seed" in meta:
        return f"{fallback}: from audio (seed {meta['seed']}){adjusted}"
    return fallback + adjusted


class JoyGenPlotMotion:
    """A picture of the mouth opening over time, for one or two motions and optionally a video's own mouth."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "motion": ("JOYGEN_MOTION", {"tooltip": "The motion to plot (blue, filled)."}),
            },
            "optional": {
                "motion_b": ("JOYGEN_MOTION", {"tooltip": "A second motion to compare (orange)."}),
                "face_track": ("JOYGEN_FACE_TRACK", {"tooltip": "A face track whose own mouth is drawn too (green); "
                               "frames without a face are grey bands."}),
                "recon_models": ("JOYGEN_RECON_MODELS", {"tooltip": "JoyGen Load 3DMM Models: its BFM turns "
                                 "expressions into the inner-lip gap in mm. Without it the plot shows expression "
                                 "activity (no unit) and says so."}),
                "width": ("INT", {"default": 960, "min": 320, "max": 4096, "step": 16,
                                  "tooltip": "Width of the plot in pixels."}),
                "height": ("INT", {"default": 360, "min": 200, "max": 2048, "step": 16,
                                   "tooltip": "Height of the plot in pixels."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("plot",)
    FUNCTION = "run"
    CATEGORY = "JoyGen/motion"
    DESCRIPTION = ("Mouth opening over time (seconds): the inner-lip gap of the BFM mean face driven by each "
                   "motion's expressions, in mm; connect Preview Image to see it.")

    def run(self, motion, motion_b=None, face_track=None, recon_models=None, width=960, height=360):
        import torch

        from ..joygen_core.motion.plot import plot_mouth_opening

        motions = [motion] + ([motion_b] if motion_b is not None else [])
        labels = [_label(motion, "motion")] + ([_label(motion_b, "motion b")] if motion_b is not None else [])
        bfm = getattr(recon_models, "bfm", None) if recon_models is not None else None
        if recon_models is not None and bfm is None:
            raise InputError("recon_models has no BFM face model: connect the output of JoyGen Load 3DMM Models")
        if bfm is None:
            log.info("JoyGen Plot Motion: no BFM connected; plotting expression activity instead of mouth opening")
        img = plot_mouth_opening(motions, bfm, face_track, labels=labels, width=int(width), height=int(height))
        return (torch.from_numpy(img).float().div(255.0)[None],)


class JoyGenLoadSyncNet(DeviceMenu):
    """Load the SyncNet of Wav2Lip's evaluation (syncnet_v2.model) for lip-sync scores."""

    @classmethod
    def INPUT_TYPES(cls):
        names = choices(model_store().list_files((".model",)), NO_SYNCNET)
        return {"required": {
            "model": (names, {"default": pick(names, "syncnet/syncnet_v2.model"),
                              "tooltip": "syncnet_v2.model (joonson/syncnet_python download_model.sh) inside "
                                         "models/joygen, e.g. models/joygen/syncnet/syncnet_v2.model."}),
            "device": (devices(), {"default": "auto", "tooltip": "Where SyncNet runs; auto = ComfyUI's device."}),
        }}

    RETURN_TYPES = ("JOYGEN_SYNCNET",)
    RETURN_NAMES = ("syncnet",)
    FUNCTION = "load"
    CATEGORY = "JoyGen/loaders"
    DESCRIPTION = "SyncNet v2 (the network behind LSE-D / LSE-C in the paper's tables)."

    def load(self, model, device="auto"):
        from ..joygen_core.score import load_syncnet, syncnet_file

        return (load_syncnet(syncnet_file(model_store(), model), torch_device(device)),)


class JoyGenSyncScore:
    """LSE-D, LSE-C and the audio-video offset of frames and their sound (the paper's lip-sync metrics)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "syncnet": ("JOYGEN_SYNCNET", {"tooltip": "From JoyGen Load SyncNet."}),
                "images": ("IMAGE", {"tooltip": "The video frames to score (e.g. JoyGen Edit's output)."}),
                "audio": ("AUDIO", {"tooltip": "The sound the lips should follow (the driving speech)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the frames; they are re-timed to SyncNet's 25 fps."}),
            },
            "optional": {
                "face_track": ("JOYGEN_FACE_TRACK", {"tooltip": "Face track of these frames: its boxes are used, its "
                               "frames without a face left out. Without it faces are found here (MTCNN)."}),
                "vshift": ("INT", {"default": 15, "min": 1, "max": 50, "tooltip": "Largest offset searched, in "
                                   "frames at 25 fps (official 15)."}),
            },
        }

    RETURN_TYPES = ("FLOAT", "FLOAT", "INT", "STRING")
    RETURN_NAMES = ("lse_d", "lse_c", "offset", "report")
    FUNCTION = "run"
    CATEGORY = "JoyGen/measure"
    DESCRIPTION = ("Lip-sync error of a video: LSE-D (lower is better), LSE-C (higher is better) and the offset in "
                   "25 fps frames (positive: the lips lag the sound), as train evaluate computes them.")

    def run(self, syncnet, images, audio, fps, face_track=None, vshift=15):
        from ..joygen_core.score import score_frames
        from ..joygen_core.video.convert import audio_from_comfy, image_to_uint8

        frames = image_to_uint8(images)
        check_interrupt()
        bar = stage_progress("sync score", desc="JoyGen Sync Score")
        try:
            if face_track is not None:
                report = score_frames(syncnet, frames, float(fps), audio_from_comfy(audio),
                                      boxes=face_track.det_box, found=face_track.detected, vshift=int(vshift),
                                      progress=bar.for_stage("sync score"))
            else:
                from ..joygen_core.face.detect import load_mtcnn

                device = next(syncnet.parameters()).device
                report = score_frames(syncnet, frames, float(fps), audio_from_comfy(audio),
                                      detector=load_mtcnn(device), vshift=int(vshift),
                                      progress=bar.for_stage("sync score"))
        finally:
            bar.close()
        text = report.summary()
        log.info("JoyGen Sync Score:\n%s", text)
        return (report.lse_d, report.lse_c, report.offset, text)


NODE_CLASS_MAPPINGS = {
    "JoyGenMotionFromVideo": JoyGenMotionFromVideo,
    "JoyGenAdjustMotion": JoyGenAdjustMotion,
    "JoyGenPlotMotion": JoyGenPlotMotion,
    "JoyGenLoadSyncNet": JoyGenLoadSyncNet,
    "JoyGenSyncScore": JoyGenSyncScore,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "JoyGenMotionFromVideo": "JoyGen Motion from Video",
    "JoyGenAdjustMotion": "JoyGen Adjust Motion",
    "JoyGenPlotMotion": "JoyGen Plot Motion",
    "JoyGenLoadSyncNet": "JoyGen Load SyncNet",
    "JoyGenSyncScore": "JoyGen Sync Score",
}
