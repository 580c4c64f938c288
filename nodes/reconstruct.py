"""3DMM reconstruction nodes: load the detector + regressor + BFM, and turn frames into a face track."""

from __future__ import annotations

from .comfy import (
    DeviceMenu,
    cache_dir,
    check_interrupt,
    choices,
    devices,
    model_store,
    pick,
    stage_progress,
    torch_device,
    with_ui,
)

BFM_PLACEHOLDER = "(put BFM/BFM_model_front.mat in models/joygen)"
REGRESSOR_PLACEHOLDER = "(put face_recon_feat0.2_augment/epoch_20.pth in models/joygen)"
DTYPES = ("float32", "float16", "bfloat16")
MP468_NAME = "index_mp468_from_mesh35709.npy"
SHOWN_FRAMES = 4  # frames of the overlay shown in the node


class JoyGenLoad3DMMModels(DeviceMenu):
    """MTCNN (from the facenet-pytorch wheel), the Deep3DFaceRecon regressor and the Basel Face Model."""

    @classmethod
    def INPUT_TYPES(cls):
        store = model_store()
        mats = store.list_files((".mat",))
        bfm = choices([n for n in mats if n.endswith(("BFM_model_front.mat", "01_MorphableModel.mat"))],
                      BFM_PLACEHOLDER)
        # Only regressor-looking .pth files: the face parser and its backbone also end in .pth.
        regressors = choices([n for n in store.list_files((".pth",)) if not n.startswith("face-parse-bisent/")],
                             REGRESSOR_PLACEHOLDER)
        return {
            "required": {
                "bfm": (bfm, {"default": pick(bfm, "BFM/BFM_model_front.mat"), "tooltip": "BFM/BFM_model_front.mat "
                        "from the official bundle (or BFM/01_MorphableModel.mat with the BFM09 sources beside it: "
                        "the front model is then built once into the temp folder). "
                        "index_mp468_from_mesh35709.npy beside it is loaded too."}),
                "regressor": (regressors, {"default": pick(regressors, "face_recon_feat0.2_augment/epoch_20.pth"),
                                           "tooltip": "Deep3DFaceRecon checkpoint: "
                                                      "face_recon_feat0.2_augment/epoch_20.pth."}),
                "device": (devices(), {"default": "auto", "tooltip": "Where detection and "
                           "regression run; auto = ComfyUI's device."}),
            },
            "optional": {
                "dtype": (list(DTYPES), {"default": "float32", "tooltip": "Regressor precision (float16 / bfloat16 "
                          "are faster on GPUs; float32 reproduces the official numbers)."}),
                "min_face_size": ("INT", {"default": 50, "min": 10, "max": 1000, "tooltip": "Smallest face MTCNN "
                                  "looks for, in pixels (official: 50). Lower it for small faces in large frames."}),
            },
        }

    RETURN_TYPES = ("JOYGEN_RECON_MODELS",)
    RETURN_NAMES = ("recon_models",)
    FUNCTION = "load"
    CATEGORY = "JoyGen/loaders"
    DESCRIPTION = "Load the face detector, the 3DMM coefficient regressor and the Basel Face Model."

    def load(self, bfm, regressor, device, dtype="float32", min_face_size=50):
        import torch

        from ..joygen_core.morphable.bfm import find_or_build_bfm
        from ..joygen_core.morphable.reconstruct import load_recon_models

        store = model_store()
        chosen = store.path(bfm)
        bfm_path = chosen
        if chosen.name != "BFM_model_front.mat":  # BFM09 sources: build the front model once, in the temp folder
            bfm_path = find_or_build_bfm(chosen.parent, cache_dir() / "bfm" / "BFM_model_front.mat")
        mp468 = chosen.parent / MP468_NAME
        models = load_recon_models(bfm_path, store.path(regressor), torch_device(device), getattr(torch, dtype),
                                   mp468_path=mp468 if mp468.is_file() else None, min_face_size=min_face_size)
        return (models,)


class JoyGen3DMMReconstruct:
    """Frames -> face track: per frame the face box, five points, 257 BFM coefficients and 68 landmarks."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames (gray and RGBA are accepted)."}),
                "recon_models": ("JOYGEN_RECON_MODELS", {"tooltip": "From JoyGen Load 3DMM Models."}),
                "face_policy": (["largest", "track"], {"default": "largest", "tooltip": "With several faces: the "
                                "largest in each frame (official), or the one that continues the previous "
                                "frame's face."}),
                "smooth": ("BOOLEAN", {"default": False, "tooltip": "Smooth detector jitter over time (zero-lag "
                           "One Euro filter): steadier crops; off reproduces the official per-frame numbers."}),
            },
            "optional": {
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the frames (sets the smoothing time scale; stored in "
                                  "the track)."}),
                "batch_size": ("INT", {"default": 64, "min": 1, "max": 1024, "tooltip": "Frames per regressor "
                               "batch; lower it if memory runs out."}),
                "min_score": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Ignore detections below this MTCNN confidence."}),
            },
        }

    RETURN_TYPES = ("JOYGEN_FACE_TRACK", "IMAGE")
    RETURN_NAMES = ("face_track", "preview")
    FUNCTION = "run_node"
    CATEGORY = "JoyGen/face"
    DESCRIPTION = ("Detect the face in every frame, fit Basel Face Model coefficients (Deep3DFaceRecon) and "
                   "derive the face box. Frames without a face are flagged and later passed through unchanged.")

    def reconstruct(self, images, recon_models, face_policy, smooth, fps=25.0, batch_size=64, min_score=0.0):
        from ..joygen_core.morphable.reconstruct import draw_preview, reconstruct
        from ..joygen_core.video.convert import image_to_uint8, uint8_to_image

        frames = image_to_uint8(images)
        bar = stage_progress("3DMM reconstruction", desc="JoyGen 3DMM Reconstruct")
        try:
            check_interrupt()
            track = reconstruct(frames, recon_models.detector, recon_models.regressor, recon_models.bfm,
                                batch_size=batch_size, policy=face_policy, smooth=smooth, fps=fps,
                                min_score=min_score, progress=bar.for_stage("3DMM reconstruction"))
        finally:
            bar.close()
        preview = uint8_to_image(draw_preview(frames, track))
        return (track, preview)

    def run_node(self, **inputs):
        """ComfyUI's entry: the face track, and the landmark / 3DMM overlay shown in the node."""
        result = self.reconstruct(**inputs)
        return with_ui(result, result[1], "JoyGen_3dmm", SHOWN_FRAMES)


NODE_CLASS_MAPPINGS = {"JoyGenLoad3DMMModels": JoyGenLoad3DMMModels, "JoyGen3DMMReconstruct": JoyGen3DMMReconstruct}
NODE_DISPLAY_NAME_MAPPINGS = {"JoyGenLoad3DMMModels": "JoyGen Load 3DMM Models",
                              "JoyGen3DMMReconstruct": "JoyGen 3DMM Reconstruct"}
