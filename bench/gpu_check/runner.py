"""Running a profile's parts: each in its own time window within the check's budget, the commands it
runs within that window, and whatever goes wrong in it its own result, never the check's."""

import re
import time
from collections.abc import Callable
from pathlib import Path

from bench.gpu_check.parts import Part, PartFailed, PartResult, PartSkipped, Profile
from bench.gpu_check.report import status_cell, write_report
from bench.harness import run_logged

MIN_PART_S = 20  # a part that would get less than this is not started


class Check:
    """One run of the acceptance check: its profile, clock, deadlines, folders and the results so far."""

    def __init__(self, profile: Profile, out: Path, budget_s: float, clock: Callable[[], float] = time.monotonic):
        self.profile = profile
        self.out = out
        self.logs = out / "logs"
        self.runs = out / "runs"
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + budget_s
        self.part_deadline = self.deadline  # the running part's: its limit, or the check's end if sooner
        self.results: dict[str, PartResult] = {}
        self.plans: dict[tuple[str, ...], float] = {}  # plan flags -> planned GiB
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)

    def wall_s(self) -> float:
        """Seconds since the check started."""
        return self.clock() - self.started

    def start_part(self, limit_s: float) -> None:
        """Open the next part's window: ``limit_s``, or less where the check's budget ends sooner; raises
        PartFailed when too little of the budget is left to start it."""
        left = self.deadline - self.clock()
        if left < MIN_PART_S:
            raise PartFailed(f"not run: the check's time budget (--budget_s) was spent ({left:.0f} s left)")
        self.part_deadline = self.clock() + min(limit_s, left)

    def time_left(self) -> float:
        """Seconds left in the running part's window; raises PartFailed when it is over."""
        left = self.part_deadline - self.clock()
        if left <= 0:
            raise PartFailed("the part's time limit was reached")
        return left

    def run_command(self, command: list[str], log_name: str, env: dict | None = None) -> tuple[int, Path]:
        """Run ``command`` (``harness.run_logged``) with ``env`` added, output to ``logs/{log_name}.log``, within
        the part's window; (exit status, log). Past the window it is stopped and the part fails."""
        log_path = self.logs / f"{log_name}.log"
        finished = run_logged(command, log_path, self.time_left(), env)
        if finished.stopped:
            raise PartFailed(f"{finished.stopped} (log: {log_path})")
        return finished.status, log_path


def error_line(log_path: Path) -> str | None:
    """The last line of a log that names an error: a Python exception, or a one-line ``error:`` message."""
    found = None
    for line in log_path.read_text(errors="replace").splitlines():
        text = line.strip()
        if re.match(r"(\[rank\d+\]: )?[\w.]*(Error|Exception)(:|$)", text) or "error:" in text:
            found = text
    return found


def failure_reason(what: str, log_path: Path) -> str:
    """``what`` (what failed, and how), with the error line of its log when there is one."""
    detail = error_line(log_path)
    return f"{what}: {detail} (log: {log_path})" if detail else f"{what} (log: {log_path})"


def run_part(check: Check, part: Part) -> PartResult:
    """Run one part within its time limit; whatever goes wrong in it becomes its failure, never the check's."""
    print(f"== {part.name}", flush=True)
    started = check.clock()
    try:
        check.start_part(part.limit_s)
        passed = part.run(check)
        result = PartResult(part.name, "pass", summary=passed.summary, figures=passed.figures)
    except PartSkipped as skipped:
        result = PartResult(part.name, "skip", reason=str(skipped))
    except PartFailed as failed:
        result = PartResult(part.name, "fail", reason=str(failed))
    except Exception as error:  # a bug or a surprise in this package: reported, and the next part runs
        result = PartResult(part.name, "fail", reason=f"{type(error).__name__}: {error}")
    result.wall_s, result.limit_s, result.estimate_s = check.clock() - started, part.limit_s, part.estimate_s
    result.stands_in_for = part.stands_in_for
    print(f"== {part.name}: {status_cell(result)} ({result.wall_s:.0f} s)", flush=True)
    return result


def not_run(profile: Profile, selected: list[str], only: bool) -> dict[str, str]:
    """Why each of the profile's parts outside ``selected`` does not run."""
    return {part.name: ("not among --only" if only or part.default
                        else f"opt-in: add it with --all or --only {part.name}")
            for part in profile.parts if part.name not in selected}


def run_parts(check: Check, selected: list[str], header: dict, unselected: dict[str, str]) -> None:
    """Run the ``selected`` parts in the profile's order, rewriting the report (``header`` on top, the
    ``unselected`` parts listed as not run) after each."""
    for part in check.profile.parts:
        if part.name in selected:
            check.results[part.name] = run_part(check, part)
            write_report(check.out, header, list(check.results.values()), check.wall_s(), unselected)
