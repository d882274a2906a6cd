"""Command-line flag parsing shared by every command: errors as ``ConfigError``, ranged numbers.

Every ``python -m`` command and ``pretrain_ds.py`` parse with ``FlagParser``, so a bad flag is
one line and exit status 2 like any other bad input. This module imports nothing from the
project but its error family, so commands that never train (the tokenizer trainer, the memory
planner) do not load DeepSpeed to parse their flags.
"""

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from minimind.errors import ConfigError


class FlagParser(argparse.ArgumentParser):
    """An argument parser whose complaints are ``ConfigError``s: one line and exit status 2, as
    for every other bad input (``--help`` still prints and exits)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


def number_at_least(minimum: float, kind: type = int, maximum: float | None = None) -> Callable[[str], int | float]:
    """An argparse ``type``: a finite ``kind`` (int or float) from ``minimum`` to ``maximum``
    (``nan`` and ``inf`` refused)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            bound = f"at least {minimum}" if kind is int else f"a finite number >= {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {kind(maximum)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE = number_at_least(1)
SEED = number_at_least(0, maximum=2**32 - 1)  # what NumPy's seeding accepts


def weight_prefix(text: str) -> str:
    """An argparse ``type``: a ``--save_weight``/``--from_weight`` prefix, a plain file-name part (no path
    separator, not empty, not starting with a dot) so that ``{prefix}_{hidden}.pth`` stays in the save folder."""
    if not text or text.startswith(".") or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"must be a file-name prefix such as pretrain or full_sft, got {text!r}")
    return text
