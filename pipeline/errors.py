"""Errors a user can act on. Their messages are one line and say what to fix."""


class TubeletError(Exception):
    """Base class: caught by the job launchers and printed as one line (exit status 2)."""


class StorageError(TubeletError):
    """A local path or object-store URL cannot be read or written (missing, unreachable, denied)."""


class VideoError(TubeletError):
    """A video cannot be probed, decoded or transcoded; the message is the quarantine reason."""


class DataError(TubeletError):
    """Training/eval data is unusable: no shards, missing labels, too many decode errors."""
