"""The one error family users see: ``UserInputError`` and the one-line message helper.

Every problem with what the user gave (a flag, a DeepSpeed JSON value, a data file, a
tokenizer, a checkpoint, the launcher's environment, a missing optional package) raises a
subclass of ``UserInputError``, with a one-line message that names the flag, file or line.
Entry points catch this base alone, print the message and exit with ``exit_status``.

This module imports nothing from the project, so every layer above ``kernels`` can use it.
"""


class UserInputError(ValueError):
    """Input the run cannot use, described in one line; entry points exit with ``exit_status``."""

    exit_status = 2


class ConfigError(UserInputError):
    """An unusable DeepSpeed config, flag value or flag combination."""


class MissingDependencyError(UserInputError):
    """A flag asks for an optional package that is not installed (e.g. ``--use_wandb`` without wandb)."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when the message is empty):
    compilers, drivers and parsers write messages many lines long."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
