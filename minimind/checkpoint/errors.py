"""The error every checkpoint command and resume path reports in one line."""


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint; the message is one line naming it."""
