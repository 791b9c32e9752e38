"""Errors a user can act on. Their messages are one line and say what to fix."""


class TubeletError(Exception):
    """Base class: caught by the job launchers and printed as one line (exit status 2).

    ``retryable``: whether running the same thing again could end otherwise. A config, data or
    weights error cannot: Ray Train does not restart workers for it (``scaling.max_failures``
    is for crashes); storage and tracking outages can pass.
    """

    retryable = False


class StorageError(TubeletError):
    """A local path or object-store URL cannot be read or written (missing, unreachable, denied)."""

    retryable = True  # an object store or network that was down may be back


class VideoError(TubeletError):
    """A video cannot be probed, decoded or transcoded; the message is the quarantine reason."""


class DataError(TubeletError):
    """Training/eval data is unusable: no shards, missing labels, too many decode errors."""


def one_line(exc: BaseException, with_type: bool = False) -> str:
    """The first non-empty line of an exception's message (libraries append paragraphs of advice);
    ``with_type`` prefixes the class name. An empty message gives the class name alone."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
