"""Error types: every user-facing failure says what is wrong and what to do about it."""

from __future__ import annotations


class JoyGenError(RuntimeError):
    """Base class for errors a user can act on (bad input, missing or wrong weights)."""


class ModelFileError(JoyGenError):
    """A weight file is missing, unreadable, unsafe, or does not match what its loader expects."""


class UnsafePathError(JoyGenError):
    """A file name from a workflow or the command line resolves outside its allowed folder."""


class MediaError(JoyGenError):
    """A video or audio input cannot be read, or holds no usable frames / samples."""


class InputError(JoyGenError, ValueError):
    """Inputs that do not fit together (lengths, missing connections, a frame without a face asked for)."""
