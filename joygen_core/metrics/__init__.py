"""Lip-sync metric of the evaluation: SyncNet and LSE-D / LSE-C (:mod:`.syncnet`).

It lives in the library because the Sync Score node and ``python -m joygen_core score`` need it with no
training module around; ``train.metrics.syncnet`` re-exports it for ``python -m train evaluate``. Scoring a
video file or frames (face boxes, frames without a face, re-timing) is :mod:`joygen_core.score`.
"""
