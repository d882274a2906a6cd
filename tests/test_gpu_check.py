"""``python -m bench.gpu_check``: the GPU profile's order and time limits with faked part durations, the
dry-run profile's parts named for what they run, and ``--dry-run --all``, the whole check on CPU at toy
sizes (marked ``launch``: the ``dry_run`` fixture launches)."""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check.__main__ import parse_args
from bench.gpu_check.parts import Passed
from bench.gpu_check.profiles import DEFAULT_BUDGET_S, DEFAULT_ESTIMATE_LIMIT_S, DRY_RUN_PROFILE, GPU_PROFILE
from bench.gpu_check.pytest_parts import pytest_counts
from bench.gpu_check.runner import Check, not_run, run_parts
from bench.gpu_check.training import TrainingPart
from tests.launcher import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_ONLY_PARTS = {"gpu-tests", "train-tiny-fp16"}  # the parts a CPU cannot run
TRAINING_PARTS = ("train-tiny-triton-interpreted", "train-tiny-torch", "train-tiny-zero2-ckpt", "moe-tiny-ep1")
GPU_PRESETS = ("26m", "1b", "145m")  # what the GPU profile's training parts are named for


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


def test_dry_run_parts_stand_in_for_the_gpu_parts_under_names_of_their_own():
    gpu, dry = GPU_PROFILE.parts, DRY_RUN_PROFILE.parts
    assert [part.stands_in_for for part in dry] == [part.name for part in gpu]  # same order
    for stand_in, part in zip(dry, gpu, strict=True):
        assert (stand_in.limit_s, stand_in.estimate_s, stand_in.default) == (
            part.limit_s, part.estimate_s, part.default), stand_in.name
        assert not any(preset in stand_in.name for preset in GPU_PRESETS), stand_in.name
    trained = {part.name: part.run.training.flags for part in dry if isinstance(part.run, TrainingPart)}
    assert set(trained) == set(TRAINING_PARTS) | {"train-tiny-fp16"}
    for name, flags in trained.items():  # "tiny": the 64 x 2 model, no preset
        assert "tiny" in name and "--preset" not in flags and flags[flags.index("--hidden_size") + 1] == "64", name
    assert "train-tiny-zero2-ckpt" in trained and "bench-kernels-smoke" in DRY_RUN_PROFILE.part_names
    assert GPU_PROFILE.part_names[0] == "train-1b-zero2-ckpt" and GPU_PROFILE.on_gpu and not DRY_RUN_PROFILE.on_gpu


def test_every_part_passes_or_skips_where_only_a_gpu_can_run_it(dry_run, report):
    result, _ = dry_run
    parts = parts_by_name(report)
    assert list(parts) == list(DRY_RUN_PROFILE.part_names)  # in the profile's order, each with its limit and estimate
    table = {part.name: part for part in DRY_RUN_PROFILE.parts}
    for name, part in parts.items():
        assert (part["limit_s"], part["estimate_s"]) == (table[name].limit_s, table[name].estimate_s), name
        assert part["stands_in_for"] == table[name].stands_in_for, name
        allowed = ("pass", "skip") if name in GPU_ONLY_PARTS else ("pass",)
        assert part["status"] in allowed, f"{name}: {part['status']}: {part['reason']}"
        if part["status"] == "skip":
            assert part["reason"].strip(), name
    assert report["passed"] is True
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_report_records_the_profile_and_the_environment(dry_run, report):
    _, out = dry_run
    assert report["profile"] == "cpu-dry-run" and report["profile_description"].startswith("Dry run on CPU")
    assert (out / "report.md").read_text().startswith("# GPU acceptance check: cpu-dry-run profile\n")
    for key in ("date", "gpu", "torch", "cuda", "deepspeed", "triton"):
        assert key in report, key
    assert report["deepspeed"] and report["torch"]


def test_training_figures_are_read_from_each_runs_metrics(dry_run, report):
    _, out = dry_run
    parts = parts_by_name(report)
    warmup = {part.name: part.run.training.warmup_steps for part in DRY_RUN_PROFILE.parts
              if isinstance(part.run, TrainingPart)}
    for name in TRAINING_PARTS:
        figures = parts[name]["figures"]
        assert isinstance(figures["tokens_per_s"], float) and figures["tokens_per_s"] > 0, name
        records = read_metrics(out / "runs" / name)
        expected = statistics.median(record["tokens_per_s"] for record in records[warmup[name]:])
        assert figures["tokens_per_s"] == expected, name
        assert not (out / "runs" / name / "checkpoints").exists(), f"{name}: checkpoints left behind"
    for name in ("train-tiny-triton-interpreted", "train-tiny-torch", "train-tiny-zero2-ckpt"):
        assert parts[name]["figures"]["plan_total_gib"] > 0, name
    # Interpreted Triton kernels and the PyTorch reference train the same fp32 model alike.
    torch_run = parts["train-tiny-torch"]["figures"]
    assert torch_run["loss_compared_with"] == "train-tiny-triton-interpreted"
    assert torch_run["max_loss_difference"] < 1e-4


def test_generation_ran_the_exported_model(report):
    figures = parts_by_name(report)["hf-generate"]["figures"]
    assert figures["text"].strip() and figures["new_tokens"] > 0
    assert figures["device"] == "cpu"
    assert figures["model_class"].startswith("transformers_modules.")


def test_markdown_table_has_a_row_per_part(dry_run):
    result, out = dry_run
    markdown = (out / "report.md").read_text()
    assert "| part | status | wall s | limit s | H100 estimate s | key figures |" in markdown
    limits = {part.name: (part.limit_s, part.estimate_s) for part in DRY_RUN_PROFILE.parts}
    for name in DRY_RUN_PROFILE.part_names:
        assert f"| {name} | " in markdown, name
        assert f" | {limits[name][0]} | {limits[name][1]} | " in markdown.split(f"| {name} | ")[1].splitlines()[0], name
    assert "| part | status |" in result.stdout
    assert "train-tiny-zero2-ckpt for train-1b-zero2-ckpt" in markdown


def test_parts_past_the_time_budget_are_not_run_and_the_report_is_still_written(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(tmp_path), "--budget_s",
                             "1", "--only", "hf-generate", "train-tiny-torch", "train-tiny-fp16"], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text())
    parts = parts_by_name(report)
    assert list(parts) == ["train-tiny-fp16", "hf-generate", "train-tiny-torch"]  # the profile's order, not --only's
    for part in parts.values():
        assert part["status"] == "fail" and "time budget" in part["reason"], part
    assert set(report["not_run"]) == set(DRY_RUN_PROFILE.part_names)
    assert report["not_run"]["train-tiny-zero2-ckpt"] == "not among --only"
    markdown = (tmp_path / "report.md").read_text()
    assert "| train-tiny-torch | fail: not run" in markdown and "Not run: " in markdown


def test_only_names_parts_of_the_profile_that_runs(capsys):
    assert parse_args(["--only", "train-1b-zero2-ckpt"]).only == ["train-1b-zero2-ckpt"]
    assert parse_args(["--dry-run", "--only", "train-tiny-zero2-ckpt"]).only == ["train-tiny-zero2-ckpt"]
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--dry-run", "--only", "train-1b-zero2-ckpt"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "train-1b-zero2-ckpt: not a part of the cpu-dry-run profile" in error and "train-tiny-zero2-ckpt" in error


class FakeClock:
    """The check's clock, advanced by the fake parts."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def faked_part(clock: FakeClock, name: str, seconds: float, seen: dict):
    """Part ``name``, which records the time its window allows, then takes ``seconds`` and asks for time
    again (as each command of a real part does), passing if its window held."""

    def run(check: Check) -> Passed:
        seen[name] = check.time_left()
        clock.now += seconds
        check.time_left()
        return Passed("", {})

    return run


@pytest.fixture
def faked_table():
    """Fake parts in the GPU profile's place, each taking ``durations[name]`` seconds (default: the part's
    estimate) on a fake clock; returns (run the GPU profile's default parts, windows seen per part)."""
    clock, seen = FakeClock(), {}

    def run(tmp_path: Path, durations: dict[str, float] | None = None) -> tuple[Check, float]:
        parts = tuple(dataclasses.replace(part, run=faked_part(clock, part.name, (durations or {}).get(
            part.name, part.estimate_s), seen)) for part in GPU_PROFILE.parts)
        profile = dataclasses.replace(GPU_PROFILE, parts=parts)
        check = Check(profile, out=tmp_path, budget_s=DEFAULT_BUDGET_S, clock=clock)
        started = clock.now
        selected = list(profile.default_part_names)
        header = {"profile": "gpu", "profile_description": "faked", "date": "", "gpu": "faked", "torch": "",
                  "cuda": "", "deepspeed": "", "triton": "", "transformers": ""}
        run_parts(check, selected, header, not_run(profile, selected, only=False))
        return check, clock.now - started

    return run, seen


def expected_windows(durations: dict[str, float]) -> dict[str, float]:
    """Each default part's window: its limit, or what the budget has left after the parts before it."""
    windows, spent = {}, 0.0
    for part in GPU_PROFILE.parts:
        if part.default:
            windows[part.name] = min(part.limit_s, DEFAULT_BUDGET_S - spent)
            spent += durations.get(part.name, part.estimate_s)
    return windows


def test_the_gpu_profile_answers_training_first_and_fits_eight_minutes(faked_table, tmp_path):
    run, seen = faked_table
    check, took_s = run(tmp_path)
    assert list(check.results)[:4] == ["train-1b-zero2-ckpt", "train-26m-fp16", "moe-ep1", "hf-generate"]
    assert list(check.results) == list(GPU_PROFILE.default_part_names) and "gpu-tests" in check.results
    assert all(result.status == "pass" for result in check.results.values())
    assert took_s <= DEFAULT_ESTIMATE_LIMIT_S == 480 and DEFAULT_BUDGET_S == 580
    assert seen == expected_windows({})  # each part its own limit, or the budget's end where that comes first
    assert all(part.estimate_s <= part.limit_s for part in GPU_PROFILE.parts)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and set(report["not_run"]) == {"kernel-tests", "bench-kernels"}
    assert "opt-in" in report["not_run"]["kernel-tests"]


def test_a_part_past_its_limit_fails_alone_and_the_budget_stops_the_rest(faked_table, tmp_path):
    run, seen = faked_table
    limits = {part.name: part.limit_s for part in GPU_PROFILE.parts}
    # moe-ep1 overruns its limit; train-26m-triton then takes what is left of the whole budget
    durations = {"moe-ep1": limits["moe-ep1"] + 1, "train-26m-triton": DEFAULT_BUDGET_S}
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
    counts = pytest_counts(junit)
    assert counts["failed"] == counts["errors"] == 0, result.stdout[-3000:]
    assert counts["skipped"] > 50 and counts["passed"] > 0
