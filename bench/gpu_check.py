"""GPU acceptance check: kernels, training, expert parallelism and export on one GPU, in one command.

    python -m bench.gpu_check            # one H100/H200, about 8 minutes; report in gpu_check/
    python -m bench.gpu_check --dry-run  # CPU, toy sizes, about 2 minutes: keeps this script from rotting
    python -m bench.gpu_check --all      # the opt-in kernel tests and kernel benchmark too
    python -m bench.gpu_check --only train-1b-zero2-ckpt moe-ep1 hf-generate   # rerun some parts

Run it from the repository root, with the project installed (``pip install -e .``; on a machine
without a package index, ``pip install --no-deps --no-build-isolation -e .``). The parts run in
this order, each in subprocesses within its own time limit (``PART_TABLE``), so that one failure
does not stop the rest. The answers to "does training work here, how fast, within what memory"
come first:

- ``train-1b-zero2-ckpt``: the 1b preset at ZeRO-2 bf16 with ``--activation_checkpointing``:
  MFU, tokens/s and peak GPU memory against ``python -m minimind.plan``;
- ``train-26m-fp16``: ``zero2_fp16.json``'s dynamic loss scaling on the 26m preset;
- ``moe-ep1``: the 145m-moe preset under AutoEP at ``--ep_size 1`` (``zero2_bf16_moe_ep.json``);
- ``hf-generate``: ``python -m minimind.checkpoint export`` of that run to a Hugging Face folder,
  loaded with ``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`` on the GPU
  and the shipped tokenizer, greedy ``generate``;
- ``train-26m-triton``, ``train-26m-torch``: the 26m preset in bf16 with ``--kernels triton`` and
  ``torch`` (what the fused kernels gain end to end; the two runs' losses compared);
- ``gpu-tests``: ``pytest -m gpu`` with ``TRITON_INTERPRET=0`` (compiled kernels); on a GPU every
  one of them must run and pass.

Opt-in (``--all`` or ``--only``), for their many cold compiles:

- ``kernel-tests``: ``tests/test_kernels_*.py`` in full, compiled (their ``device`` fixture picks CUDA);
- ``bench-kernels``: ``python -m bench.kernels`` (Triton RMSNorm and RoPE against eager and
  ``torch.compile``, GB/s against a measured device copy); its table goes into the report.

The training parts run ``pretrain_ds.py`` under ``deepspeed --num_gpus 1`` for a few dozen steps
on the bundled corpus, accumulation 1. Figures: median ``tokens_per_s`` and ``mfu`` of
``metrics.jsonl`` after the warm-up steps, and the peak GPU memory against the plan.

Peak GPU memory is not logged by the trainer: it is measured from outside, by polling
``nvidia-smi --query-gpu=memory.used`` every 0.2 s during the launch, minus the reading before
it. That counts what the allocator reserved plus the CUDA context (about 0.5 GiB), which the
plan leaves to its 10% reserve.

``--dry-run`` runs the same parts on CPU (``CUDA_VISIBLE_DEVICES=""``) at toy sizes: the
gpu-marked tests (all skipped), one kernel test file interpreted, ``bench.kernels --smoke``,
a 64 x 2 model in fp32 (``zero2_fp32.json``) instead of the presets (the triton run with
interpreted kernels, ``TRITON_INTERPRET=1``), the fp16 run skipped (DeepSpeed refuses fp16 on
CPU), the MoE run in fp32, export and generation on CPU.

Output in ``--out`` (default ``gpu_check/``): ``report.json`` (environment, every part's
status, reason, wall time and figures; rewritten after each part, so a killed check still
leaves one), ``report.md`` (the summary table, also printed), ``logs/`` and each run's
``metrics.jsonl`` under ``runs/``; checkpoints and exported weights are deleted once read.
Exit status 0 when every part passed or was skipped with a reason, 1 otherwise.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DS_CONFIGS = REPO_ROOT / "ds_configs"
TOKENIZER_DIR = REPO_ROOT / "minimind" / "tokenizer" / "default"
DEFAULT_BUDGET_S = 580  # the whole check, under the 10 minutes a device command may run
DEFAULT_ESTIMATE_LIMIT_S = 480  # the default parts' estimates on one H100 add up to at most 8 minutes
MIN_PART_S = 20  # a part that would get less than this is not started
SAVE_INTERVAL = "1000000"  # no checkpoint before the final one
PROMPT = "The model"
GIB = 2**30


class PartFailed(Exception):
    """A part failed; the message is its reason."""


class PartSkipped(Exception):
    """A part cannot run here; the message says why."""


@dataclass
class PartResult:
    """One part's outcome: ``status`` is pass, fail or skip; ``summary`` its key figures in a few words;
    ``limit_s`` and ``estimate_s`` the part's time limit and its estimate on one H100 (``PART_TABLE``)."""

    name: str
    status: str
    reason: str = ""
    wall_s: float = 0.0
    limit_s: float = 0.0
    estimate_s: float = 0.0
    summary: str = ""
    figures: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRun:
    """One short ``pretrain_ds.py`` launch and, when ``plan_flags`` is set, the memory plan of the same run."""

    name: str
    flags: list[str]  # model, batch and kernel flags (the common ones are added at launch)
    ds_config: str  # file name under ds_configs/
    steps: int
    warmup_steps: int  # leading logged steps left out of the medians
    plan_flags: list[str] | None
    env: dict = field(default_factory=dict)
    skip_reason: str | None = None


def training_runs(dry_run: bool) -> dict[str, TrainingRun]:
    """The training parts: the presets on a GPU; a 64 x 2 model in fp32 standing in for each in a dry run."""
    if dry_run:
        # evaluation and samples run as on a GPU, bounded: the whole held-out 1% is ~800 forwards per run here
        tiny = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "32", "--batch_size", "2",
                "--eval_batches", "2", "--sample_tokens", "4"]
        plan = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "32", "--micro_batch", "2",
                "--precision", "fp32"]
        common = {"ds_config": "zero2_fp32.json", "steps": 3, "warmup_steps": 1}
        return {
            "train-26m-triton": TrainingRun("train-26m-triton", [*tiny, "--kernels", "triton"], plan_flags=plan,
                                            env={"TRITON_INTERPRET": "1"}, **common),
            "train-26m-torch": TrainingRun("train-26m-torch", [*tiny, "--kernels", "torch"], plan_flags=plan,
                                           **common),
            "train-26m-fp16": TrainingRun("train-26m-fp16", tiny, plan_flags=None, **common,
                                          skip_reason="fp16 needs a GPU: DeepSpeed refuses fp16 on CPU"),
            "train-1b-zero2-ckpt": TrainingRun("train-1b-zero2-ckpt", [*tiny, "--activation_checkpointing"],
                                               plan_flags=[*plan, "--activation_checkpointing"], **common),
            "moe-ep1": TrainingRun("moe-ep1", [*tiny, "--use_moe", "1", "--ep_size", "1"], plan_flags=None,
                                   **common),
        }
    small = ["--preset", "26m", "--max_seq_len", "340", "--batch_size", "32"]
    small_plan = ["--preset", "26m", "--max_seq_len", "340", "--micro_batch", "32"]
    large = ["--preset", "1b", "--max_seq_len", "2048", "--batch_size", "4", "--activation_checkpointing"]
    large_plan = ["--preset", "1b", "--max_seq_len", "2048", "--micro_batch", "4", "--activation_checkpointing"]
    common = {"steps": 30, "warmup_steps": 5}
    return {
        "train-26m-triton": TrainingRun("train-26m-triton", [*small, "--kernels", "triton"], "zero2_bf16.json",
                                        plan_flags=[*small_plan, "--precision", "bf16"], **common),
        "train-26m-torch": TrainingRun("train-26m-torch", [*small, "--kernels", "torch"], "zero2_bf16.json",
                                       plan_flags=[*small_plan, "--precision", "bf16"], **common),
        "train-26m-fp16": TrainingRun("train-26m-fp16", small, "zero2_fp16.json",
                                      plan_flags=[*small_plan, "--precision", "fp16"], **common),
        "train-1b-zero2-ckpt": TrainingRun("train-1b-zero2-ckpt", large, "zero2_bf16.json", steps=20, warmup_steps=5,
                                           plan_flags=[*large_plan, "--precision", "bf16"]),
        "moe-ep1": TrainingRun("moe-ep1", ["--preset", "145m-moe", "--use_moe", "1", "--ep_size", "1",
                                           "--max_seq_len", "340", "--batch_size", "16"], "zero2_bf16_moe_ep.json",
                               steps=10, warmup_steps=3, plan_flags=None),
    }


class GpuMemoryPeak:
    """Highest ``nvidia-smi`` ``memory.used`` of GPU 0 while the ``with`` block runs, minus the reading
    before it, in MiB (None where nvidia-smi is missing). GPU 0 is where ``deepspeed --num_gpus 1``
    puts its rank: with ``--num_gpus`` the runner ignores ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, interval_s: float = 0.2):
        self.command = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        self.interval_s = interval_s
        self.available = shutil.which("nvidia-smi") is not None
        self.baseline_mib = self.peak_mib = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _read_mib(self) -> int | None:
        result = subprocess.run(self.command, capture_output=True, text=True)
        return int(result.stdout.split()[0]) if result.returncode == 0 and result.stdout.strip() else None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            used = self._read_mib()
            if used is not None:
                self.peak_mib = max(self.peak_mib or 0, used)

    def __enter__(self) -> "GpuMemoryPeak":
        if self.available:
            self.baseline_mib = self._read_mib()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()

    @property
    def run_mib(self) -> int | None:
        if self.baseline_mib is None or self.peak_mib is None:
            return None
        return self.peak_mib - self.baseline_mib


class Check:
    """One run of the acceptance check: its settings, deadline, folders and the results so far."""

    def __init__(self, dry_run: bool, out: Path, budget_s: float):
        self.dry_run = dry_run
        self.out = out
        self.logs = out / "logs"
        self.runs = out / "runs"
        self.deadline = time.monotonic() + budget_s
        self.part_deadline = self.deadline  # the running part's: its limit, or the check's end if sooner
        self.training = training_runs(dry_run)
        self.results: dict[str, PartResult] = {}
        self.plans: dict[tuple[str, ...], float] = {}  # plan flags -> planned GiB
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)

    def start_part(self, limit_s: float) -> None:
        """Open the next part's window: ``limit_s``, or less where the check's budget ends sooner; raises
        PartFailed when too little of the budget is left to start it."""
        left = self.deadline - time.monotonic()
        if left < MIN_PART_S:
            raise PartFailed(f"not run: the check's time budget (--budget_s) was spent ({left:.0f} s left)")
        self.part_deadline = time.monotonic() + min(limit_s, left)

    def time_left(self) -> float:
        """Seconds left in the running part's window; raises PartFailed when it is over."""
        left = self.part_deadline - time.monotonic()
        if left <= 0:
            raise PartFailed("the part's time limit was reached")
        return left

    def run_command(self, command: list[str], log_name: str, env: dict | None = None) -> tuple[int, Path]:
        """Run ``command`` from the repository root with ``env`` added to this environment, output to
        ``logs/{log_name}.log``; (exit status, log).

        Its own session, so a timeout stops everything it started; a timeout fails the part."""
        log_path = self.logs / f"{log_name}.log"
        timeout_s = self.time_left()
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            try:
                return process.wait(timeout=timeout_s), log_path
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise PartFailed(f"timed out after {timeout_s:.0f} s (log: {log_path})") from None


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


def format_counts(counts: dict) -> str:
    return f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"


def part_gpu_tests(check: Check) -> PartResult:
    """The gpu-marked tests with compiled kernels: all must run and pass on a GPU; on CPU they skip."""
    counts = run_pytest(check, "gpu-tests", ["-m", "gpu", *gpu_marked_files()], {"TRITON_INTERPRET": "0"})
    if counts["skipped"] and check.dry_run and not counts["passed"]:
        raise PartSkipped(f"all {counts['skipped']} gpu-marked tests skipped: {counts['first_skip_reason']}")
    if counts["skipped"] and not check.dry_run:
        raise PartFailed(f"{counts['skipped']} gpu-marked tests skipped on a GPU: {counts['first_skip_reason']}")
    if not counts["passed"]:
        raise PartFailed("no gpu-marked test ran")
    return PartResult("gpu-tests", "pass", summary=format_counts(counts), figures=counts)


def part_kernel_tests(check: Check) -> PartResult:
    """The kernel test files, compiled, on the GPU (less the gpu-marked tests, run by gpu-tests); one, interpreted,
    in a dry run."""
    if check.dry_run:
        files, env = ["tests/test_kernels_rope.py"], {"TRITON_INTERPRET": "1"}
    else:
        files = sorted(f"tests/{path.name}" for path in (REPO_ROOT / "tests").glob("test_kernels_*.py"))
        env = {"TRITON_INTERPRET": "0"}
    counts = run_pytest(check, "kernel-tests", ["-m", "not gpu", *files], env)
    mode = "interpreted" if check.dry_run else "compiled"
    return PartResult("kernel-tests", "pass", summary=f"{format_counts(counts)} ({len(files)} files, {mode})",
                      figures={**counts, "files": files, "triton": mode})


def parse_kernel_table(text: str) -> tuple[float | None, list[dict]]:
    """``bench.kernels``'s copy bandwidth (GB/s) and its table rows as dicts keyed by the header."""
    copy = re.search(r"Device-to-device copy: ([\d.]+) GB/s", text)
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        else:
            rows.append(dict(zip(header, cells, strict=True)))
    return (float(copy.group(1)) if copy else None), rows


def part_bench_kernels(check: Check) -> PartResult:
    """``python -m bench.kernels`` (``--smoke`` in a dry run): its table, and per kernel the largest shape's
    forward+backward speed-ups."""
    command = [sys.executable, "-m", "bench.kernels", *(["--smoke"] if check.dry_run else [])]
    status, log_path = check.run_command(command, "bench-kernels")
    if status != 0:
        raise PartFailed(failure_reason(f"bench.kernels exited {status}", log_path))
    copy_gbs, rows = parse_kernel_table(log_path.read_text())
    if not rows:
        raise PartFailed(f"bench.kernels printed no table (log: {log_path})")
    largest = {}
    for row in rows:
        if row["mode"] == "forward+backward":
            largest[row["kernel"]] = row  # shapes are listed smallest first
    if check.dry_run:
        summary = f"smoke: {len(rows)} rows, the three implementations agree (times meaningless)"
    else:
        summary = f"copy {copy_gbs:,.0f} GB/s; fwd+bwd " + "; ".join(
            f"{kernel} {row['shape']}: {row['triton GB/s']} GB/s ({row['% of copy']} of copy), "
            f"{row['vs eager']} eager, {row['vs compile']} compile" for kernel, row in largest.items())
    return PartResult("bench-kernels", "pass", summary=summary,
                      figures={"copy_gbs": copy_gbs, "largest_forward_backward": largest, "table": rows})


def planned_total_gib(check: Check, plan_flags: list[str], log_name: str) -> float:
    """``python -m minimind.plan``'s total per rank (GiB) for one GPU at ZeRO-2 (each set of flags planned once)."""
    key = tuple(plan_flags)
    if key not in check.plans:
        command = [sys.executable, "-m", "minimind.plan", "--world_size", "1", "--zero", "2", *plan_flags]
        status, log_path = check.run_command(command, log_name)
        found = re.search(r"total per rank\s+([\d.]+) GiB", log_path.read_text())
        if status != 0 or not found:
            raise PartFailed(failure_reason(f"minimind.plan exited {status}", log_path))
        check.plans[key] = float(found.group(1))
    return check.plans[key]


def read_metrics(save_dir: Path) -> list[dict]:
    """The training records of ``{save_dir}/metrics.jsonl`` (its validation rows left out)."""
    path = save_dir / "metrics.jsonl"
    if not path.is_file():
        raise PartFailed(f"the run wrote no {path}")
    from minimind.training.run_files import is_validation_record  # a constant module: loads nothing of training

    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [record for record in records if not is_validation_record(record)]


def launch_training(check: Check, run: TrainingRun, ds_config: Path, save_dir: Path) -> GpuMemoryPeak | None:
    """``deepspeed --num_gpus 1 --module pretrain_ds`` with ``run``'s flags into a fresh ``save_dir``, until
    its final checkpoint is complete; the GPU memory it took (None in a dry run)."""
    from bench.launch_part import launch_part  # imports the training side; the generate part must not

    shutil.rmtree(save_dir, ignore_errors=True)
    checkpoints = save_dir / "checkpoints"
    checkpoints.mkdir(parents=True)  # launch_part writes its log beside the file it waits for
    flags = [*run.flags, "--deepspeed_config", str(ds_config), "--accumulation_steps", "1", "--max_steps",
             str(run.steps), "--log_interval", "1", "--save_interval", SAVE_INTERVAL, "--save_dir", str(save_dir)]
    latest = checkpoints / "latest"  # written once every rank has finished the final checkpoint
    log_path = check.logs / f"{run.name}.log"
    memory = GpuMemoryPeak() if not check.dry_run else None
    try:
        with memory or contextlib.nullcontext():
            launch_part("pretrain_ds", 1, flags, run.name, latest, check.time_left(), exit_grace_s=60,
                        env=run.env)
    except SystemExit as stopped:
        raise PartFailed(failure_reason(str(stopped), log_path)) from None
    finally:
        if latest.with_suffix(".log").is_file():
            shutil.move(latest.with_suffix(".log"), log_path)
    if not list(save_dir.glob("pretrain_*.pth")):
        raise PartFailed(f"the run wrote its checkpoint but no .pth weights (log: {log_path})")
    return memory


def remove_weights(save_dir: Path) -> None:
    """Delete a finished run's checkpoints and ``.pth`` (gigabytes for the 1b preset); keep its metrics."""
    shutil.rmtree(save_dir / "checkpoints", ignore_errors=True)
    for weights in save_dir.glob("pretrain_*.pth"):
        weights.unlink()


def training_figures(run: TrainingRun, records: list[dict]) -> dict:
    """Medians of tokens/s and MFU over the logged steps after the warm-up, and the loss at both ends."""
    measured = records[run.warmup_steps:] or records[-1:]
    return {"steps_logged": len(records), "median_of_steps": [measured[0]["step"], measured[-1]["step"]],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in measured),
            "mfu": statistics.median(r["mfu"] for r in measured),
            "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"],
            "loss_scale": records[-1]["loss_scale"], "skipped_steps": records[-1]["skipped_steps"]}


def memory_figures(check: Check, run: TrainingRun, memory: GpuMemoryPeak | None) -> dict:
    """Measured peak GPU memory (GiB) and the plan's figure for the same run."""
    figures = {"plan_total_gib": planned_total_gib(check, run.plan_flags, f"{run.name}-plan")
               if run.plan_flags else None}
    if memory is None:
        figures["peak_memory_method"] = "not measured: no GPU in a dry run"
    elif memory.run_mib is None:
        figures["peak_memory_method"] = "not measured: nvidia-smi gave no reading"
    else:
        figures.update(peak_gib=memory.run_mib * 2**20 / GIB, idle_mib=memory.baseline_mib,
                       peak_memory_method="nvidia-smi memory.used of GPU 0 polled every 0.2 s, peak - idle")
    return figures


def summarize_training(figures: dict) -> str:
    parts = [f"{figures['tokens_per_s']:,.0f} tok/s", f"MFU {figures['mfu']:.1%}",
             f"loss {figures['first_loss']:.3f}->{figures['last_loss']:.3f}"]
    if "peak_gib" in figures:
        parts.append(f"peak {figures['peak_gib']:.2f} GiB")
    if figures.get("plan_total_gib") is not None:
        parts.append(f"plan {figures['plan_total_gib']:.2f} GiB")
    if figures["loss_scale"] is not None:
        parts.append(f"loss scale {figures['loss_scale']:g}, {figures['skipped_steps']} skipped")
    if "max_loss_difference_vs_triton" in figures:
        parts.append(f"max |loss - triton run's| {figures['max_loss_difference_vs_triton']:.2g}")
    return ", ".join(parts)


def train_and_measure(check: Check, run: TrainingRun, ds_config: Path, keep_checkpoint: bool = False) -> dict:
    """Launch ``run``, then its figures: throughput and losses from its metrics, memory against the plan.
    The run's checkpoint and weights are deleted, unless ``keep_checkpoint`` and it succeeded."""
    save_dir = check.runs / run.name
    try:
        memory = launch_training(check, run, ds_config, save_dir)
        records = read_metrics(save_dir)
        figures = {**training_figures(run, records), **memory_figures(check, run, memory)}
    except BaseException:
        remove_weights(save_dir)
        raise
    if not keep_checkpoint:
        remove_weights(save_dir)
    if not figures["tokens_per_s"] > 0:
        raise PartFailed(f"tokens_per_s {figures['tokens_per_s']} in {save_dir / 'metrics.jsonl'}")
    shown_config = ds_config.relative_to(REPO_ROOT) if ds_config.is_relative_to(REPO_ROOT) else ds_config
    return {**figures, "aux_loss": records[-1]["aux_loss"], "ds_config": str(shown_config), "flags": run.flags,
            "env": run.env}


def train_part(name: str) -> Callable[[Check], PartResult]:
    """The part that trains dense run ``name``; the torch run's losses are compared with the triton run's."""

    def part(check: Check) -> PartResult:
        run = check.training[name]
        if run.skip_reason:
            raise PartSkipped(run.skip_reason)
        figures = train_and_measure(check, run, DS_CONFIGS / run.ds_config)
        triton_metrics = check.runs / "train-26m-triton" / "metrics.jsonl"
        if name == "train-26m-torch" and triton_metrics.is_file():
            triton = {r["step"]: r["loss"] for r in read_metrics(triton_metrics.parent)}
            torch_losses = read_metrics(check.runs / name)
            figures["max_loss_difference_vs_triton"] = max(
                abs(r["loss"] - triton[r["step"]]) for r in torch_losses if r["step"] in triton)
        return PartResult(name, "pass", summary=summarize_training(figures), figures=figures)

    return part


def fp32_moe_config(destination: Path) -> Path:
    """``zero2_bf16_moe_ep.json`` with bf16 off and torch's fused AdamW: the dry run's MoE config."""
    config = json.loads((DS_CONFIGS / "zero2_bf16_moe_ep.json").read_text())
    config["bf16"] = {"enabled": False}
    config["optimizer"]["params"].update(torch_adam=True, fused=True)
    destination.write_text(json.dumps(config, indent=2))
    return destination


def part_moe(check: Check) -> PartResult:
    """AutoEP at ``--ep_size 1``: a few steps; its checkpoint is kept for ``hf-generate``."""
    run = check.training["moe-ep1"]
    ds_config = DS_CONFIGS / run.ds_config
    if check.dry_run:
        ds_config = fp32_moe_config(check.logs / "zero2_fp32_moe_ep.json")
    figures = train_and_measure(check, run, ds_config, keep_checkpoint=True)
    summary = f"{summarize_training(figures)}, aux loss {figures['aux_loss']:.4f}"
    return PartResult("moe-ep1", "pass", summary=summary, figures=figures)


def part_hf_generate(check: Check) -> PartResult:
    """Export ``moe-ep1``'s checkpoint to a Hugging Face folder, then greedy generation from it in a fresh process."""
    save_dir = check.runs / "moe-ep1"
    moe = check.results.get("moe-ep1")
    if moe is None or moe.status != "pass":
        raise PartSkipped("no checkpoint to export: moe-ep1 did not pass")
    hf_dir, modules_cache = check.out / "hf", check.out / "hf_modules"
    shutil.rmtree(hf_dir, ignore_errors=True)
    try:
        export = [sys.executable, "-m", "minimind.checkpoint", "export", str(save_dir / "checkpoints"), str(hf_dir),
                  "--format", "hf"]
        status, log_path = check.run_command(export, "hf-export")
        if status != 0:
            raise PartFailed(failure_reason(f"export exited {status}", log_path))
        generated_json = check.logs / "hf-generate.json"
        generated_json.unlink(missing_ok=True)
        device = "cpu" if check.dry_run else "cuda"
        max_new_tokens = 8 if check.dry_run else 32
        generate = [sys.executable, "-m", "bench.gpu_check", "--part", "generate", "--hf_dir", str(hf_dir),
                    "--device", device, "--max_new_tokens", str(max_new_tokens), "--result", str(generated_json)]
        # HF_MODULES_CACHE: where transformers copies the exported folder's remote code
        status, log_path = check.run_command(generate, "hf-generate", {"HF_MODULES_CACHE": str(modules_cache)})
        if status != 0 or not generated_json.is_file():
            raise PartFailed(failure_reason(f"generation exited {status}", log_path))
    finally:
        remove_weights(save_dir)
        shutil.rmtree(hf_dir, ignore_errors=True)
        shutil.rmtree(modules_cache, ignore_errors=True)
    figures = json.loads(generated_json.read_text())
    if not figures["text"].strip():
        raise PartFailed(f"generation produced no text ({figures['new_tokens']} new tokens)")
    if not figures["device"].startswith(device):
        raise PartFailed(f"the model ran on {figures['device']}, not {device}")
    if not figures["model_class"].startswith("transformers_modules."):
        raise PartFailed(f"{figures['model_class']} was loaded, not the exported folder's modeling_minimind.py")
    summary = f"on {figures['device']}: {PROMPT!r} -> {figures['text'][:60]!r}"
    return PartResult("hf-generate", "pass", summary=summary, figures=figures)


def generate_text(hf_dir: Path, device: str, max_new_tokens: int) -> dict:
    """Greedy continuation of ``PROMPT`` by the exported folder's model (its own code, ``trust_remote_code``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).to(device).eval()
    prompt_ids = [tokenizer.bos_token_id, *tokenizer(PROMPT)["input_ids"]]  # documents start with bos in training
    ids = torch.tensor([prompt_ids], device=device)  # (1, prompt tokens)
    with torch.no_grad():
        output = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[0, ids.shape[1]:].tolist()
    return {"prompt": PROMPT, "text": tokenizer.decode(new_tokens, skip_special_tokens=True),
            "new_tokens": len(new_tokens), "device": str(next(model.parameters()).device),
            "model_class": f"{type(model).__module__}.{type(model).__name__}"}


@dataclass(frozen=True)
class Part:
    """One part of the check: what runs it, how long it should take on one H100 (an estimate from its
    sizes and steps: no GPU has timed it yet) and the most it may take, and whether it runs by default."""

    name: str
    run: Callable[[Check], PartResult]
    estimate_s: int
    limit_s: int
    default: bool = True


# In running order (hf-generate exports moe-ep1's checkpoint; train-26m-torch compares with the triton
# run). Each launch starts cold: imports, DeepSpeed's set-up and a CUDA context take about 30 s.
PART_TABLE = (
    # 1.0B parameters: building it, 20 steps of 2 x 2048 tokens (about 0.4 s each at 40% MFU), and a
    # 14 GB final checkpoint (bf16 weights, fp32 masters and Adam moments) written and read back
    Part("train-1b-zero2-ckpt", train_part("train-1b-zero2-ckpt"), estimate_s=150, limit_s=300),
    Part("train-26m-fp16", train_part("train-26m-fp16"), estimate_s=60, limit_s=180),
    Part("moe-ep1", part_moe, estimate_s=70, limit_s=240),  # AutoEP's set-up, 10 steps
    Part("hf-generate", part_hf_generate, estimate_s=40, limit_s=180),  # export, then load and 32 tokens
    Part("train-26m-triton", train_part("train-26m-triton"), estimate_s=55, limit_s=180),  # + kernel compiles
    Part("train-26m-torch", train_part("train-26m-torch"), estimate_s=45, limit_s=180),
    Part("gpu-tests", part_gpu_tests, estimate_s=60, limit_s=240),  # a few dozen compiled-kernel tests
    # opt-in: about 90 Triton specialisations compiled cold, and bench.kernels recompiling per case
    Part("kernel-tests", part_kernel_tests, estimate_s=240, limit_s=300, default=False),
    Part("bench-kernels", part_bench_kernels, estimate_s=240, limit_s=360, default=False),
)
PARTS = tuple(part.name for part in PART_TABLE)
DEFAULT_PARTS = tuple(part.name for part in PART_TABLE if part.default)


def run_part(check: Check, part: Part) -> PartResult:
    """Run one part within its time limit; whatever goes wrong in it becomes its failure, never the check's."""
    print(f"== {part.name}", flush=True)
    started = time.perf_counter()
    try:
        check.start_part(part.limit_s)
        result = part.run(check)
    except PartSkipped as skipped:
        result = PartResult(part.name, "skip", reason=str(skipped))
    except PartFailed as failed:
        result = PartResult(part.name, "fail", reason=str(failed))
    except Exception as error:  # a bug or a surprise in this script: reported, and the next part runs
        result = PartResult(part.name, "fail", reason=f"{type(error).__name__}: {error}")
    result.wall_s, result.limit_s, result.estimate_s = time.perf_counter() - started, part.limit_s, part.estimate_s
    print(f"== {part.name}: {status_cell(result)} ({result.wall_s:.0f} s)", flush=True)
    return result


def not_run(selected: list[str], only: bool) -> dict[str, str]:
    """Why each part outside ``selected`` does not run."""
    return {part.name: ("not among --only" if only or part.default
                        else f"opt-in: add it with --all or --only {part.name}")
            for part in PART_TABLE if part.name not in selected}


def run_parts(check: Check, selected: list[str], env: dict, skipped: dict[str, str]) -> None:
    """Run the ``selected`` parts in ``PART_TABLE``'s order, rewriting the report after each."""
    started = time.perf_counter()
    for part in PART_TABLE:
        if part.name in selected:
            check.results[part.name] = run_part(check, part)
            write_report(check, env, time.perf_counter() - started, skipped)


def environment(dry_run: bool, query_gpu: bool) -> dict:
    """The date, library versions, CUDA version and, with ``query_gpu``, ``torch.cuda.get_device_name()``
    (which starts a CUDA context in this process: asked only once the parts are done)."""
    import torch

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    if not query_gpu:
        gpu = "not asked yet"
    else:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    return {"date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "mode": "dry run (CPU, toy sizes)" if dry_run else "gpu", "gpu": gpu,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "deepspeed": version("deepspeed"), "triton": version("triton"), "transformers": version("transformers"),
            "python": sys.version.split()[0]}


def status_cell(result: PartResult) -> str:
    """``pass``, or ``fail: ...`` / ``skip: ...`` with the first line of the reason."""
    return result.status if not result.reason else f"{result.status}: {result.reason.splitlines()[0]}"


def markdown_report(env: dict, results: list[PartResult], wall_s: float, skipped: dict[str, str]) -> str:
    """The summary: environment line, one table row per part, the parts not run, how memory was measured."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# GPU acceptance check: {env['mode']}", "",
             f"{env['date']}; {env['gpu']}; torch {env['torch']} (CUDA {env['cuda']}), deepspeed {env['deepspeed']}, "
             f"triton {env['triton']}, transformers {env['transformers']}; {wall_s:.0f} s in all", "",
             "| part | status | wall s | limit s | H100 estimate s | key figures |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {r.name} | {cell(status_cell(r))} | {r.wall_s:.0f} | {r.limit_s:.0f} | {r.estimate_s:.0f} | "
              f"{cell(r.summary)} |" for r in results]
    if skipped:
        lines += ["", "Not run: " + "; ".join(f"{name} ({why})" for name, why in skipped.items()) + "."]
    lines += ["", "Training: median over the logged steps after the warm-up, accumulation 1. Peak memory: "
              "nvidia-smi memory.used during the launch minus before it (allocator reserve + CUDA context); "
              "plan: python -m minimind.plan for the same preset, ZeRO stage, micro-batch and sequence."]
    if env["mode"] != "gpu":
        lines += ["", "Dry run: a 64 x 2 fp32 model stands in for every preset (its speeds and MFU say nothing); "
                  "the triton run interprets the kernels (TRITON_INTERPRET=1)."]
    return "\n".join(lines) + "\n"


def write_report(check: Check, env: dict, wall_s: float, unselected: dict[str, str]) -> str:
    """Write ``report.json`` and ``report.md``; returns the markdown. Their "not run" list holds the
    ``unselected`` parts and those the time budget left no room for."""
    results = list(check.results.values())
    skipped = {**{r.name: r.reason for r in results if r.reason.startswith("not run")}, **unselected}
    report = {**env, "wall_s": wall_s, "passed": all(r.status != "fail" for r in results),
              "parts": [asdict(r) for r in results], "not_run": skipped}
    (check.out / "report.json").write_text(json.dumps(report, indent=1))
    markdown = markdown_report(env, results, wall_s, skipped)
    (check.out / "report.md").write_text(markdown)
    return markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks this script")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="report folder")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None, help="run these parts only")
    parser.add_argument("--all", action="store_true", help="the opt-in parts too: " + ", ".join(
        name for name in PARTS if name not in DEFAULT_PARTS))
    parser.add_argument("--budget_s", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for the whole check; a part that would start after it fails as not run")
    parser.add_argument("--part", choices=("check", "generate"), default="check", help=argparse.SUPPRESS)
    parser.add_argument("--hf_dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--max_new_tokens", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part == "generate":
        args.result.write_text(json.dumps(generate_text(args.hf_dir, args.device, args.max_new_tokens)))
        return 0
    # Everything started from here inherits these: the repository importable, kernels compiled
    # (not interpreted) unless a part says otherwise, and no GPU at all in a dry run.
    os.environ.update(PYTHONPATH=str(REPO_ROOT), TRITON_INTERPRET="0")
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif shutil.which("nvidia-smi") is None:
        sys.exit("bench/gpu_check.py needs a CUDA GPU (nvidia-smi not found); --dry-run checks it on CPU")
    check = Check(args.dry_run, args.out.resolve(), args.budget_s)
    started = time.perf_counter()
    env = environment(args.dry_run, query_gpu=False)
    selected = list(args.only or (PARTS if args.all else DEFAULT_PARTS))
    unselected = not_run(selected, only=args.only is not None)
    run_parts(check, selected, env, unselected)
    env = {**environment(args.dry_run, query_gpu=True), "date": env["date"]}
    markdown = write_report(check, env, time.perf_counter() - started, unselected)
    print()
    print(markdown)
    print(f"report: {check.out / 'report.json'}, {check.out / 'report.md'}")
    return 0 if all(r.status != "fail" for r in check.results.values()) else 1


if __name__ == "__main__":
    if not __package__:
        sys.exit("run it as a module from the repository root: python -m bench.gpu_check")
    sys.exit(main())
