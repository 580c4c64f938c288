"""Evaluation metrics of the paper (section 5.2): FID (:mod:`.fid`) and LSE-D / LSE-C (:mod:`.syncnet`).

Both load the standard published networks from files the user gives (the FID Inception's
``pt_inception-2015-12-05-6726825d.pth`` and SyncNet's ``syncnet_v2.model``); neither is part of
the JoyGen model folder. ``python -m train evaluate`` (:mod:`train.evaluate`) runs them on videos.
"""

from .fid import FIDInception, GaussianStats, fid_score, frechet_distance, frechet_distance_features, load_fid_inception
from .syncnet import SyncNet, SyncScores, clip_sync_scores, load_syncnet, speech_mfcc, sync_distances, sync_scores

__all__ = [
    "FIDInception", "GaussianStats", "SyncNet", "SyncScores", "clip_sync_scores", "fid_score", "frechet_distance",
    "frechet_distance_features", "load_fid_inception", "load_syncnet", "speech_mfcc", "sync_distances", "sync_scores",
]
