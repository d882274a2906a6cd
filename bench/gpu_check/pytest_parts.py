"""The parts that run the project's tests: the gpu-marked tests with compiled kernels, and the kernel
test files (opt-in), each through ``pytest`` with a JUnit report that gives the counts."""

import re
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path

from bench.gpu_check.parts import PartFailed, PartSkipped, Passed
from bench.gpu_check.runner import Check, failure_reason
from bench.harness import REPO_ROOT


def pytest_counts(junit_xml: Path) -> dict:
    """passed/failed/errors/skipped counts, the first skip message and the first failing test of a JUnit report."""
    root = ElementTree.parse(junit_xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    tests, failed, errors, skipped = (int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped"))
    skip_messages = [element.get("message", "") for element in suite.iter("skipped")]
    failing = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    return {"passed": tests - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped,
            "first_skip_reason": skip_messages[0] if skip_messages else None,
            "first_failure": failing[0] if failing else None}


def run_pytest(check: Check, name: str, selection: list[str], env: dict) -> dict:
    """``pytest -q selection`` with ``env`` set; its counts. Fails the part on a failure, error or no test."""
    junit = check.logs / f"{name}.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *selection]
    status, log_path = check.run_command(command, name, env)
    if not junit.is_file():
        raise PartFailed(failure_reason(f"pytest exited {status}", log_path))
    counts = pytest_counts(junit)
    if counts["failed"] or counts["errors"]:
        raise PartFailed(f"{counts['failed']} failed, {counts['errors']} errors, first {counts['first_failure']} "
                         f"(log: {log_path})")
    if status != 0:
        raise PartFailed(failure_reason(f"pytest exited {status}", log_path))
    return counts


def gpu_marked_files() -> list[str]:
    """The test files with ``gpu`` tests: those that use the ``cuda_device`` fixture, which marks them
    (``tests/conftest.py``); collecting only those spares importing the whole suite."""
    return sorted(f"tests/{path.name}" for path in (REPO_ROOT / "tests").glob("test_*.py")
                  if re.search(r"\bcuda_device\b", path.read_text(encoding="utf-8")))


def kernel_test_files() -> list[str]:
    """Every kernel test file, ``tests/test_kernels_*.py``."""
    return sorted(f"tests/{path.name}" for path in (REPO_ROOT / "tests").glob("test_kernels_*.py"))


def format_counts(counts: dict) -> str:
    """``N passed, N failed, N skipped``."""
    return f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"


def gpu_tests(check: Check) -> Passed:
    """The gpu-marked tests with compiled kernels: all must run and pass on a GPU; on CPU they skip."""
    counts = run_pytest(check, "gpu-tests", ["-m", "gpu", *gpu_marked_files()], {"TRITON_INTERPRET": "0"})
    if counts["skipped"] and not check.profile.on_gpu and not counts["passed"]:
        raise PartSkipped(f"all {counts['skipped']} gpu-marked tests skipped: {counts['first_skip_reason']}")
    if counts["skipped"] and check.profile.on_gpu:
        raise PartFailed(f"{counts['skipped']} gpu-marked tests skipped on a GPU: {counts['first_skip_reason']}")
    if not counts["passed"]:
        raise PartFailed("no gpu-marked test ran")
    return Passed(format_counts(counts), counts)


def kernel_tests_part(files: list[str], interpreted: bool) -> Callable[[Check], Passed]:
    """The part that runs the kernel test ``files`` (less the gpu-marked tests, which ``gpu_tests`` runs),
    with the Triton kernels ``interpreted`` or compiled."""

    def part(check: Check) -> Passed:
        env = {"TRITON_INTERPRET": "1" if interpreted else "0"}
        counts = run_pytest(check, "kernel-tests", ["-m", "not gpu", *files], env)
        mode = "interpreted" if interpreted else "compiled"
        summary = f"{format_counts(counts)} ({len(files)} files, {mode})"
        return Passed(summary, {**counts, "files": files, "triton": mode})

    return part
