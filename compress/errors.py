"""User-facing errors.

Every error a user can cause (a bad recipe, a missing file, a corrupted artifact) is raised as a
:class:`CompressError` whose message names the file, field or value at fault. The CLI prints the message
without a traceback and exits non-zero; library callers can catch the subclasses.
"""


class CompressError(Exception):
    """An error caused by input the user can fix. The message is shown as is."""

    exit_code = 2


class RecipeError(CompressError):
    """A recipe or search-space file is invalid."""


class DataError(CompressError):
    """A dataset path, file or image is missing or malformed."""


class CheckpointError(CompressError):
    """A supernet checkpoint or artifact is missing, corrupted, or does not match."""


class StorageError(CompressError):
    """An Optuna storage cannot be reached or holds an incompatible study."""


class TrialError(Exception):
    """A single trial failed for a stated reason (NaN loss, policy error); the study goes on."""
