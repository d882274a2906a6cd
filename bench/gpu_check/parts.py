"""What a check is made of: a profile's parts in running order, and each part's result."""

from collections.abc import Callable
from dataclasses import dataclass, field


class PartFailed(Exception):
    """A part failed; the message is its reason."""


class PartSkipped(Exception):
    """A part cannot run here; the message says why."""


@dataclass(frozen=True)
class Passed:
    """What a part that passed found: its key figures in a few words, and all of them."""

    summary: str
    figures: dict


@dataclass
class PartResult:
    """One part's outcome: ``status`` is pass, fail or skip; ``summary`` its key figures in a few words;
    ``limit_s`` and ``estimate_s`` the part's time limit and its estimate on one H100; ``stands_in_for``
    the GPU profile's part a dry-run part stands in for."""

    name: str
    status: str
    reason: str = ""
    wall_s: float = 0.0
    limit_s: float = 0.0
    estimate_s: float = 0.0
    stands_in_for: str | None = None
    summary: str = ""
    figures: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    """One part of a profile: its name (what it runs, at the profile's size); what runs it (given the
    ``runner.Check``, it returns ``Passed`` or raises ``PartFailed`` or ``PartSkipped``); how long it should
    take on one H100 (an estimate from its sizes and steps: no GPU has timed it yet) and the most it may
    take; whether it runs by default. A dry-run part keeps the estimate and limit of the GPU part it
    ``stands_in_for``."""

    name: str
    run: Callable[..., Passed]
    estimate_s: int
    limit_s: int
    default: bool = True
    stands_in_for: str | None = None


@dataclass(frozen=True)
class Profile:
    """The parts one kind of check runs, in order: ``gpu`` (the presets on one GPU) or ``cpu-dry-run``
    (toy sizes on CPU, which keep the check itself from rotting); ``description`` says so in the report."""

    name: str
    description: str
    on_gpu: bool
    parts: tuple[Part, ...]

    @property
    def part_names(self) -> tuple[str, ...]:
        """Every part's name, in running order."""
        return tuple(part.name for part in self.parts)

    @property
    def default_part_names(self) -> tuple[str, ...]:
        """The names of the parts that run without ``--all`` or ``--only``, in running order."""
        return tuple(part.name for part in self.parts if part.default)
