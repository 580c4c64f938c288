"""Depth rendering node: the face track re-posed with the audio-driven expressions -> mouth depth maps."""

from __future__ import annotations

from ..joygen_core.errors import InputError
from ..joygen_core.render.raster import BACKENDS
from .comfy import stage_progress, torch_device, with_ui

SHOWN_FRAMES = 4  # frames of the face depth shown in the node


class JoyGenRenderDepth:
    """Render JoyGen's mouth depth (and a full-face depth preview) for every frame of a face track."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_track": ("JOYGEN_FACE_TRACK", {"tooltip": "Per-frame 3DMM face track from JoyGen 3DMM "
                               "Reconstruct (identity, pose and alignment of each frame)."}),
                "recon_models": ("JOYGEN_RECON_MODELS", {"tooltip": "The 3DMM models from JoyGen Load 3DMM Models; "
                                 "only its BFM face model (with the 468-point index) is used here."}),
                "backend": (list(BACKENDS), {"default": "auto", "tooltip": "Rasterizer: auto (nvdiffrast on a CUDA "
                            "device when installed, else ours), torch (ours: batched PyTorch on any device, follows "
                            "nvdiffrast's rules), nvdiffrast (CUDA only)."}),
            },
            "optional": {
                "motion": ("JOYGEN_MOTION", {"tooltip": "Expression coefficients from JoyGen Audio to Motion, one "
                           "row per frame. Without it the track's own expressions are used (the video's own mouth)."}),
                "batch_size": ("INT", {"default": 32, "min": 1, "max": 4096, "tooltip": "Frames rendered per batch."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("mouth_depth", "face_depth")
    FUNCTION = "run_node"
    CATEGORY = "JoyGen/depth"
    DESCRIPTION = ("JoyGen's 3D depth-aware input: the BFM face of each frame re-posed with the driving expressions, "
                   "rendered to depth, normalised (near bright), cut to the face box and masked to the outer lips "
                   "at 256x256 (top half black). Frames without a face give black maps.")

    def render(self, face_track, recon_models, backend="auto", motion=None, batch_size=32):
        from ..joygen_core.render.depth import render_mouth_depth

        bfm = getattr(recon_models, "bfm", None)
        if bfm is None:
            raise InputError("recon_models has no BFM face model: connect the output of JoyGen Load 3DMM Models")
        exp = None
        if motion is not None:
            exp = motion.exp
            if exp.shape[0] != len(face_track):
                raise InputError(f"The motion has {exp.shape[0]} frames but the face track has {len(face_track)}: "
                                 "fit them to the same length first (JoyGen Fit Length on the frames and track, "
                                 "with the audio as target)")
        device = torch_device("auto")
        if device.type not in ("cpu", "cuda"):
            device = bfm.meanshape.device  # tested on CPU and CUDA only
        bar = stage_progress("depth rendering", desc="JoyGen Render Depth")
        try:
            mouth, face = render_mouth_depth(face_track, exp, bfm, backend, batch_size=int(batch_size),
                                             device=device, progress=bar.for_stage("depth rendering"))
        finally:
            bar.close()
        return (mouth[..., None].expand(-1, -1, -1, 3).contiguous(),
                face[..., None].expand(-1, -1, -1, 3).contiguous())

    def run_node(self, **inputs):
        """ComfyUI's entry: the depth maps, and a few full-face depth previews shown in the node."""
        result = self.render(**inputs)
        return with_ui(result, result[1], "JoyGen_depth", SHOWN_FRAMES)


NODE_CLASS_MAPPINGS = {"JoyGenRenderDepth": JoyGenRenderDepth}
NODE_DISPLAY_NAME_MAPPINGS = {"JoyGenRenderDepth": "JoyGen Render Depth"}
