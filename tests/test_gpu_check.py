"""``python -m bench.gpu_check --dry-run``: the GPU acceptance script, run whole on CPU at toy sizes."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import PARTS, training_runs
from tests.launcher import read_metrics

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_ONLY_PARTS = {"gpu-tests", "train-26m-fp16"}  # the parts a CPU cannot run
TRAINING_PARTS = ("train-26m-triton", "train-26m-torch", "train-1b-zero2-ckpt", "moe-ep1")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out)], cwd=REPO_ROOT,
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
    assert list(parts) == list(PARTS)
    for name, part in parts.items():
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
    assert "| part | status | wall s | key figures |" in markdown
    for name in PARTS:
        assert f"| {name} | " in markdown, name
    assert "| part | status |" in result.stdout


def test_parts_past_the_time_budget_fail_and_the_report_is_still_written(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(tmp_path), "--budget_s",
                             "1", "--only", "hf-generate", "train-26m-torch", "train-26m-fp16"], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    parts = parts_by_name(json.loads((tmp_path / "report.json").read_text()))
    assert list(parts) == ["train-26m-torch", "train-26m-fp16", "hf-generate"]
    assert parts["train-26m-torch"]["status"] == "fail" and "time budget" in parts["train-26m-torch"]["reason"]
    assert parts["train-26m-fp16"]["status"] == "skip"
    assert parts["hf-generate"]["status"] == "skip" and "moe-ep1" in parts["hf-generate"]["reason"]
    assert "| train-26m-torch | fail: not run" in (tmp_path / "report.md").read_text()
