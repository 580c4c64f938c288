"""JoyGen: audio-driven, 3D depth-aware lip editing of talking-face videos (arXiv 2501.01798).

ComfyUI-free library. One sub-package per stage of the data flow:
video/ (I/O, length fitting) -> face/ (detection, alignment, face track) -> morphable/ (BFM, regressor,
geometry) -> render/ (rasterizer, depth maps) ; audio/ (16 kHz prep, Whisper, HuBERT, pitch) ->
motion/ (audio-to-expression flow VAE) ; edit/ (VAE + UNet editing, masks, blending) ; pipeline.py chains them.
weights.py finds and safely loads every weight file.
"""

__version__ = "0.1.0"
