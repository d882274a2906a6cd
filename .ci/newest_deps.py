"""Drift check: does the project still work with the newest releases its ranges allow?

    python .ci/newest_deps.py [--update-lock] [--keep]

Builds a new virtual environment from the ranges alone (``requirements.txt``,
``requirements-dev.txt``; torch is the CPU build the README pins, since GPU users bring their
own), runs the fast test tier and the README's main job (``deepspeed pretrain_ds.py`` without flags:
on a CPU the 200-step demonstration, about a minute) in it, then prints
the versions it resolved against ``requirements-lock.txt`` and every newer release that a range's
upper bound keeps out. ``--update-lock`` rewrites the lock with the resolved versions when both
checks passed. Run it before every submission: a release that breaks the project shows up here,
not on a user's machine. Exit status: 0 passed, 1 a check failed (the lock is left as it was).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements-lock.txt"
RANGES = (REPO_ROOT / "requirements.txt", REPO_ROOT / "requirements-dev.txt")
TORCH = "torch==2.13.0"  # the CPU build, as in the README's commands; never locked
LOCK_HEADER = """\
# The exact versions that CI tests (.ci/run) and the README's two commands install, with -c;
# all but torch, whose build (CPU or CUDA) is the user's choice. The ranges are in
# requirements.txt and requirements-dev.txt; this file is written by
# `python .ci/newest_deps.py --update-lock` once the fast tier and the README's main job passed on it.
"""


def project_name(requirement_line: str) -> str | None:
    """The normalised distribution name a requirements line asks for; None for comments."""
    line = requirement_line.split("#", 1)[0].strip()
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return normalised(match.group(0)) if match else None


def normalised(name: str) -> str:
    """PEP 503's form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lines: list[str]) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines (a lock, or ``pip freeze``)."""
    pins = {}
    for line in lines:
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[normalised(name)] = version.strip()
    return pins


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root, echoing it; its output goes to ours."""
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, cwd=REPO_ROOT, **kwargs)


def newest_releases(pip: list[str], names: list[str], workdir: Path) -> dict[str, str]:
    """The newest release of each of ``names`` on the package index, bounds ignored."""
    report = workdir / "newest.json"
    run([*pip, "install", "--quiet", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report), *names],
        check=True)
    return {normalised(item["metadata"]["name"]): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def version_table(resolved: dict[str, str], locked: dict[str, str]) -> list[str]:
    """One line per distribution whose resolved version differs from the lock's."""
    rows = []
    for name in sorted(set(resolved) | set(locked)):
        new, old = resolved.get(name, "-"), locked.get(name, "-")
        if new != old:
            rows.append(f"  {name:32} lock {old:14} newest allowed {new}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update-lock", action="store_true", help="rewrite requirements-lock.txt when the checks pass")
    parser.add_argument("--keep", action="store_true", help="keep the virtual environment and the run's folder")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="newest-deps."))
    venv = workdir / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip"]
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    run([*pip, "install", "--quiet", TORCH, "-e", ".[dev]"], check=True, env=env)
    freeze = run([*pip, "freeze", "--exclude-editable"], check=True, env=env, capture_output=True, text=True)
    resolved = {name: version for name, version in read_pins(freeze.stdout.splitlines()).items() if name != "torch"}
    fast_tier = run([python, "-m", "pytest", "-q", "-m", "not launch", "-p", "no:cacheprovider"], env=env)
    save_dir = workdir / "run"
    short_run = run(["deepspeed", "pretrain_ds.py", "--save_dir", str(save_dir)], env=env)
    direct = sorted({name for path in RANGES for line in path.read_text().splitlines()
                     if (name := project_name(line)) and name != "torch"})
    newest = newest_releases(pip, direct, workdir)
    locked = read_pins(LOCK.read_text().splitlines()) if LOCK.exists() else {}

    print(f"\nnewest-deps: resolved from the ranges ({len(resolved)} distributions, torch {TORCH} aside):")
    print("\n".join(f"  {name}=={version}" for name, version in sorted(resolved.items())))
    changed = version_table(resolved, locked)
    print(f"\nnewest-deps: differences from {LOCK.name}:" if changed else f"\nnewest-deps: same as {LOCK.name}")
    for row in changed:
        print(row)
    held_back = [f"  {name}: {newest[name]} released, the range allows {resolved.get(name, '-')}"
                 for name in direct if name in newest and newest[name] != resolved.get(name)]
    print("\nnewest-deps: newer releases outside the ranges' upper bounds:" if held_back
          else "\nnewest-deps: every direct dependency is at its newest release")
    for row in held_back:
        print(row)
    passed = fast_tier.returncode == 0 and short_run.returncode == 0
    print(f"\nnewest-deps: fast tier {'passed' if fast_tier.returncode == 0 else 'FAILED'}, "
          f"the README's main job {'passed' if short_run.returncode == 0 else 'FAILED'}, "
          f"{time.monotonic() - started:.0f} s")
    if passed and args.update_lock:
        LOCK.write_text(LOCK_HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(resolved.items())))
        print(f"newest-deps: wrote {LOCK.name}")
    if args.keep:
        print(f"newest-deps: kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
