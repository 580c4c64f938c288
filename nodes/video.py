"""Video-level nodes: length fitting (loop, ping-pong, trim, hold) of frames and their face track."""

from __future__ import annotations

from ..joygen_core.video.length import MODES, fit_length, frames_for_duration


class JoyGenFitLength:
    """Fit frames (and optionally their face track) to a target length: the audio's, or a frame count."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames to re-time."}),
                "mode": (list(MODES), {"default": "pingpong", "tooltip": "How to fill a longer target: "
                         "pingpong (official: forward then backward), loop, trim (never longer than the input), "
                         "hold (repeat the last frame)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the frames; turns the audio's duration into a count."}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "Fit to this audio's duration (wins over frame_count)."}),
                "frame_count": ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                                        "tooltip": "Target number of frames when no audio is given (0: keep)."}),
                "face_track": ("JOYGEN_FACE_TRACK", {"tooltip": "Re-time this face track the same way."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "JOYGEN_FACE_TRACK", "INT")
    RETURN_NAMES = ("images", "face_track", "frame_count")
    FUNCTION = "fit"
    CATEGORY = "JoyGen/video"
    DESCRIPTION = "Loop, ping-pong, trim or hold frames so the video is as long as the driving audio."

    def fit(self, images, mode, fps, audio=None, frame_count=0, face_track=None):
        from ..joygen_core.video.convert import audio_from_comfy

        n_in = int(images.shape[0])
        if audio is not None:
            n_out = frames_for_duration(audio_from_comfy(audio).duration, fps)
        else:
            n_out = int(frame_count) if frame_count else n_in
        index = fit_length(n_in, n_out, mode)
        track = face_track.select(index) if face_track is not None else None
        return (images[index], track, int(index.shape[0]))


NODE_CLASS_MAPPINGS = {"JoyGenFitLength": JoyGenFitLength}
NODE_DISPLAY_NAME_MAPPINGS = {"JoyGenFitLength": "JoyGen Fit Length"}
