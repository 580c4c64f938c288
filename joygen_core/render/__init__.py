"""Depth rendering (JoyGen's "3D depth-aware" input): batched rasterizer, depth maps, training augmentations.

``raster.rasterize_depth`` renders camera-space meshes to depth (our PyTorch rasterizer or nvdiffrast);
``depth.render_mouth_depth`` turns a face track and expressions into the mouth depth maps the editor
consumes; ``augment`` holds the training-time displacement and dropping of those maps.
"""
