"""The error every checkpoint command and resume path reports in one line."""

from minimind.errors import UserInputError


class CheckpointError(UserInputError):
    """A path that is not a usable checkpoint; the message is one line naming it."""
