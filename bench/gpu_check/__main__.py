"""``python -m bench.gpu_check``: the profile and parts the flags choose, run in order, then the report."""

import argparse
import os
import shutil
import sys
from pathlib import Path

from bench.gpu_check.profiles import DEFAULT_BUDGET_S, DRY_RUN_PROFILE, GPU_PROFILE
from bench.gpu_check.report import report_header, write_report
from bench.gpu_check.runner import Check, not_run, run_parts
from bench.harness import REPO_ROOT


def opt_in(names: tuple[str, ...], defaults: tuple[str, ...]) -> str:
    """The names not among ``defaults``, comma-separated."""
    return ", ".join(name for name in names if name not in defaults)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The check's flags; ``--only`` names parts of the profile that runs (``--dry-run``'s or the GPU's)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=(
        "GPU acceptance check: training, expert parallelism, export and kernels on one GPU, in one command"))
    parser.add_argument("--dry-run", action="store_true", help="the CPU dry-run profile, toy sizes: checks the check")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="report folder")
    parser.add_argument("--only", nargs="+", metavar="PART", default=None, help=(
        "run these parts only; GPU profile: " + " ".join(GPU_PROFILE.part_names) + "; dry run: "
        + " ".join(DRY_RUN_PROFILE.part_names)))
    parser.add_argument("--all", action="store_true", help=(
        "the opt-in parts too: " + opt_in(GPU_PROFILE.part_names, GPU_PROFILE.default_part_names)
        + " (dry run: " + opt_in(DRY_RUN_PROFILE.part_names, DRY_RUN_PROFILE.default_part_names) + ")"))
    parser.add_argument("--budget_s", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for the whole check; a part that would start after it fails as not run")
    args = parser.parse_args(argv)
    profile = DRY_RUN_PROFILE if args.dry_run else GPU_PROFILE
    unknown = [name for name in args.only or [] if name not in profile.part_names]
    if unknown:
        parser.error(f"--only {' '.join(unknown)}: not a part of the {profile.name} profile, whose parts are "
                     + " ".join(profile.part_names))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit status 0 when every part passed or was skipped with a reason, 1 otherwise."""
    args = parse_args(argv)
    profile = DRY_RUN_PROFILE if args.dry_run else GPU_PROFILE
    # Everything started from here inherits these: the repository importable, kernels compiled
    # (not interpreted) unless a part says otherwise, and no GPU at all in a dry run.
    os.environ.update(PYTHONPATH=str(REPO_ROOT), TRITON_INTERPRET="0")
    if not profile.on_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif shutil.which("nvidia-smi") is None:
        sys.exit("python -m bench.gpu_check needs a CUDA GPU (nvidia-smi not found); --dry-run checks it on CPU")
    check = Check(profile, args.out.resolve(), args.budget_s)
    header = report_header(profile, query_gpu=False)
    selected = list(args.only or (profile.part_names if args.all else profile.default_part_names))
    unselected = not_run(profile, selected, only=args.only is not None)
    run_parts(check, selected, header, unselected)
    header = {**report_header(profile, query_gpu=True), "date": header["date"]}
    markdown = write_report(check.out, header, list(check.results.values()), check.wall_s(), unselected)
    print()
    print(markdown)
    print(f"report: {check.out / 'report.json'}, {check.out / 'report.md'}")
    return 0 if all(result.status != "fail" for result in check.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
