"""LSE-D / LSE-C: lip-sync error with the SyncNet of Wav2Lip's evaluation (syncnet_python, ``syncnet_v2.model``).

The implementation is the library's, :mod:`joygen_core.metrics.syncnet` (the Sync Score node and
``python -m joygen_core score`` use it with no training module installed); its conventions, reproduced from the
official evaluation, are described there. This module keeps the training module's names for it.
"""

from joygen_core.metrics.syncnet import (
    AUDIO_WINDOW,
    CROP_PAD_VALUE,
    CROP_SCALE,
    EMBED_DIM,
    FACE_SIZE,
    FPS,
    MFCC_PER_FRAME,
    SAMPLE_RATE,
    SMOOTH_KERNEL,
    VIDEO_WINDOW,
    VSHIFT,
    WEIGHTS_NAME,
    WEIGHTS_SOURCE,
    SyncEmbedder,
    SyncNet,
    SyncScores,
    audio_windows,
    clip_sync_scores,
    embed_clip,
    load_syncnet,
    mel_filterbank,
    pcm16,
    speech_mfcc,
    sync_distances,
    sync_scores,
    syncnet_crop_boxes,
    syncnet_face_crops,
    video_windows,
    window_count,
)

__all__ = [
    "AUDIO_WINDOW", "CROP_PAD_VALUE", "CROP_SCALE", "EMBED_DIM", "FACE_SIZE", "FPS", "MFCC_PER_FRAME", "SAMPLE_RATE",
    "SMOOTH_KERNEL", "VIDEO_WINDOW", "VSHIFT", "WEIGHTS_NAME", "WEIGHTS_SOURCE", "SyncEmbedder", "SyncNet",
    "SyncScores", "audio_windows", "clip_sync_scores", "embed_clip", "load_syncnet", "mel_filterbank", "pcm16",
    "speech_mfcc", "sync_distances", "sync_scores", "syncnet_crop_boxes", "syncnet_face_crops", "video_windows",
    "window_count",
]
