"""``python -m bench.gpu_check``: the GPU profile's order and time limits with faked part durations, and
``--dry-run --all``, the whole script on CPU at toy sizes (marked ``launch``: the ``dry_run`` fixture launches)."""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import gpu_check
from bench.gpu_check import DEFAULT_PARTS, PART_TABLE, PARTS, Check, PartResult, not_run, run_parts, training_runs
from tests.launcher import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_ONLY_PARTS = {"gpu-tests", "train-26m-fp16"}  # the parts a CPU cannot run
TRAINING_PARTS = ("train-26m-triton", "train-26m-torch", "train-1b-zero2-ckpt", "moe-ep1")


@pytest.fixture(scope="module")
def dry_run(launch_dir) -> tuple[subprocess.CompletedProcess, Path]:
    out = launch_dir / "gpu_check"
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--all", "--out", str(out)],
                            cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                            timeout=600)
    return result, out


@pytest.fixture(scope="module")
def report(dry_run) -> dict:
    result, out = dry_run
    assert (out / "report.json").is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def parts_by_name(report: dict) -> dict[str, dict]:
    return {part["name"]: part for part in report["parts"]}


def test_every_part_passes_or_skips_where_only_a_gpu_can_run_it(dry_run, report):
    result, _ = dry_run
    parts = parts_by_name(report)
    assert list(parts) == list(PARTS)  # in PART_TABLE's order, each with its limit and estimate
    table = {part.name: part for part in PART_TABLE}
    for name, part in parts.items():
        assert (part["limit_s"], part["estimate_s"]) == (table[name].limit_s, table[name].estimate_s), name
        allowed = ("pass", "skip") if name in GPU_ONLY_PARTS else ("pass",)
        assert part["status"] in allowed, f"{name}: {part['status']}: {part['reason']}"
        if part["status"] == "skip":
            assert part["reason"].strip(), name
    assert report["passed"] is True
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_report_records_the_environment(report):
    assert report["mode"].startswith("dry run")
    for key in ("date", "gpu", "torch", "cuda", "deepspeed", "triton"):
        assert key in report, key
    assert report["deepspeed"] and report["torch"]


def test_training_figures_are_read_from_each_runs_metrics(dry_run, report):
    _, out = dry_run
    parts = parts_by_name(report)
    warmup = {name: run.warmup_steps for name, run in training_runs(dry_run=True).items()}
    for name in TRAINING_PARTS:
        figures = parts[name]["figures"]
        assert isinstance(figures["tokens_per_s"], float) and figures["tokens_per_s"] > 0, name
        records = read_metrics(out / "runs" / name)
        expected = statistics.median(record["tokens_per_s"] for record in records[warmup[name]:])
        assert figures["tokens_per_s"] == expected, name
        assert not (out / "runs" / name / "checkpoints").exists(), f"{name}: checkpoints left behind"
    for name in ("train-26m-triton", "train-26m-torch", "train-1b-zero2-ckpt"):
        assert parts[name]["figures"]["plan_total_gib"] > 0, name
    # Interpreted Triton kernels and the PyTorch reference train the same fp32 model alike.
    assert parts["train-26m-torch"]["figures"]["max_loss_difference_vs_triton"] < 1e-4


def test_generation_ran_the_exported_model(report):
    figures = parts_by_name(report)["hf-generate"]["figures"]
    assert figures["text"].strip() and figures["new_tokens"] > 0
    assert figures["device"] == "cpu"
    assert figures["model_class"].startswith("transformers_modules.")


def test_markdown_table_has_a_row_per_part(dry_run):
    result, out = dry_run
    markdown = (out / "report.md").read_text()
    assert "| part | status | wall s | limit s | H100 estimate s | key figures |" in markdown
    limits = {part.name: (part.limit_s, part.estimate_s) for part in PART_TABLE}
    for name in PARTS:
        assert f"| {name} | " in markdown, name
        assert f" | {limits[name][0]} | {limits[name][1]} | " in markdown.split(f"| {name} | ")[1].splitlines()[0], name
    assert "| part | status |" in result.stdout


def test_parts_past_the_time_budget_are_not_run_and_the_report_is_still_written(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(tmp_path), "--budget_s",
                             "1", "--only", "hf-generate", "train-26m-torch", "train-26m-fp16"], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text())
    parts = parts_by_name(report)
    assert list(parts) == ["train-26m-fp16", "hf-generate", "train-26m-torch"]  # the table's order, not --only's
    for part in parts.values():
        assert part["status"] == "fail" and "time budget" in part["reason"], part
    assert set(report["not_run"]) == set(PARTS)
    assert report["not_run"]["train-1b-zero2-ckpt"] == "not among --only"
    markdown = (tmp_path / "report.md").read_text()
    assert "| train-26m-torch | fail: not run" in markdown and "Not run: " in markdown


class FakeClock:
    """``time.monotonic`` and ``time.perf_counter`` for the check, advanced by the fake parts."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def faked_part(clock: FakeClock, seconds: float, seen: dict):
    """A part that records the time its window allows, then takes ``seconds`` and asks for time again
    (as each command of a real part does), passing if its window held."""

    def run(check: Check) -> PartResult:
        name = next(part.name for part in gpu_check.PART_TABLE if part.run is run)
        seen[name] = check.time_left()
        clock.now += seconds
        check.time_left()
        return PartResult(name, "pass")

    return run


@pytest.fixture
def faked_table(monkeypatch):
    """Install fake parts taking ``durations[name]`` seconds (default: the part's estimate) on a fake clock;
    returns (run the GPU profile's default parts, windows seen per part)."""
    clock, seen = FakeClock(), {}
    monkeypatch.setattr(gpu_check, "time", SimpleNamespace(monotonic=clock, perf_counter=clock))

    def run(tmp_path: Path, durations: dict[str, float] | None = None) -> tuple[Check, float]:
        table = tuple(dataclasses.replace(part, run=faked_part(clock, (durations or {}).get(
            part.name, part.estimate_s), seen)) for part in PART_TABLE)
        monkeypatch.setattr(gpu_check, "PART_TABLE", table)
        check = Check(dry_run=False, out=tmp_path, budget_s=gpu_check.DEFAULT_BUDGET_S)
        started = clock.now
        run_parts(check, list(DEFAULT_PARTS), {"mode": "gpu", "date": "", "gpu": "faked", "torch": "", "cuda": "",
                                                "deepspeed": "", "triton": "", "transformers": ""},
                  not_run(list(DEFAULT_PARTS), only=False))
        return check, clock.now - started

    return run, seen


def expected_windows(durations: dict[str, float]) -> dict[str, float]:
    """Each default part's window: its limit, or what the budget has left after the parts before it."""
    windows, spent = {}, 0.0
    for part in PART_TABLE:
        if part.default:
            windows[part.name] = min(part.limit_s, gpu_check.DEFAULT_BUDGET_S - spent)
            spent += durations.get(part.name, part.estimate_s)
    return windows


def test_the_gpu_profile_answers_training_first_and_fits_eight_minutes(faked_table, tmp_path):
    run, seen = faked_table
    check, took_s = run(tmp_path)
    assert list(check.results)[:4] == ["train-1b-zero2-ckpt", "train-26m-fp16", "moe-ep1", "hf-generate"]
    assert list(check.results) == list(DEFAULT_PARTS) and "gpu-tests" in DEFAULT_PARTS
    assert all(result.status == "pass" for result in check.results.values())
    assert took_s <= gpu_check.DEFAULT_ESTIMATE_LIMIT_S == 480
    assert seen == expected_windows({})  # each part its own limit, or the budget's end where that comes first
    assert all(part.estimate_s <= part.limit_s for part in PART_TABLE)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and set(report["not_run"]) == {"kernel-tests", "bench-kernels"}
    assert "opt-in" in report["not_run"]["kernel-tests"]


def test_a_part_past_its_limit_fails_alone_and_the_budget_stops_the_rest(faked_table, tmp_path):
    run, seen = faked_table
    limits = {part.name: part.limit_s for part in PART_TABLE}
    # moe-ep1 overruns its limit; train-26m-triton then takes what is left of the whole budget
    durations = {"moe-ep1": limits["moe-ep1"] + 1, "train-26m-triton": gpu_check.DEFAULT_BUDGET_S}
    check, _ = run(tmp_path, durations)
    status = {name: result.status for name, result in check.results.items()}
    assert status["moe-ep1"] == "fail" and "time limit" in check.results["moe-ep1"].reason
    assert status["hf-generate"] == "pass" and status["train-26m-fp16"] == "pass"
    windows = expected_windows(durations)
    assert seen["train-26m-triton"] == windows["train-26m-triton"] < limits["train-26m-triton"]  # the budget's end
    assert status["train-26m-triton"] == "fail"
    for name in ("train-26m-torch", "gpu-tests"):
        assert status[name] == "fail" and check.results[name].reason.startswith("not run"), name
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"train-26m-torch", "gpu-tests", "kernel-tests", "bench-kernels"} <= set(report["not_run"])


def test_the_kernel_tests_put_every_triton_run_on_the_device_fixture(tmp_path):
    """The kernel tests with compiled kernels (``TRITON_INTERPRET=0``, as on a GPU node): a test that ran
    Triton on CPU tensors, rather than the ``device`` fixture's, fails here as it would there; the
    others skip for want of CUDA."""
    junit = tmp_path / "kernels.xml"
    files = sorted(str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "tests").glob("test_kernels_*.py"))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu",
                             f"--junitxml={junit}", *files], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "TRITON_INTERPRET": "0", "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    counts = gpu_check.pytest_counts(junit)
    assert counts["failed"] == counts["errors"] == 0, result.stdout[-3000:]
    assert counts["skipped"] > 50 and counts["passed"] > 0
