"""The training parts: a short ``pretrain_ds.py`` run on one rank, the GPU's (on CPU in the dry run),
started by ``harness.train``, then its figures: median ``tokens_per_s`` and ``mfu`` of
``metrics.jsonl`` after the warm-up steps, the losses, and the peak GPU memory (``GpuMemoryPeak``)
against ``python -m minimind.plan``'s figure for the same run."""

import contextlib
import json
import re
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.gpu_check.gpu_memory import GpuMemoryPeak
from bench.gpu_check.parts import PartFailed, PartSkipped, Passed
from bench.gpu_check.runner import Check, failure_reason
from bench.harness import REPO_ROOT, train
from minimind.report import ReportError, read_metrics_file

DS_CONFIGS = REPO_ROOT / "ds_configs"
SAVE_INTERVAL = "1000000"  # no checkpoint before the final one
GIB = 2**30


@dataclass(frozen=True)
class TrainingRun:
    """One short ``pretrain_ds.py`` launch, named as its part, and, when ``plan_flags`` is set, the memory
    plan of the same run."""

    name: str
    flags: list[str]  # model, batch and kernel flags (the common ones are added at launch)
    ds_config: str  # file name under ds_configs/
    steps: int
    warmup_steps: int  # leading logged steps left out of the medians
    plan_flags: list[str] | None
    ds_config_updates: dict = field(default_factory=dict)  # per section, keys set in the config's copy
    env: dict = field(default_factory=dict)
    skip_reason: str | None = None

    @property
    def moe(self) -> bool:
        """Whether the run trains a MoE model (its summary then shows the aux loss)."""
        return "--use_moe" in self.flags


def ds_config_path(check: Check, run: TrainingRun) -> Path:
    """``run``'s DeepSpeed config: the file under ds_configs/, or a copy with its updates in ``logs/``."""
    if not run.ds_config_updates:
        return DS_CONFIGS / run.ds_config
    config = json.loads((DS_CONFIGS / run.ds_config).read_text())
    for section, values in run.ds_config_updates.items():
        config[section] = {**config.get(section, {}), **values}
    path = check.logs / f"{run.name}.{run.ds_config}"
    path.write_text(json.dumps(config, indent=2))
    return path


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


def launch_training(check: Check, run: TrainingRun, ds_config: Path,
                    save_dir: Path) -> tuple[list[dict], GpuMemoryPeak | None]:
    """``run`` on one rank into a fresh ``save_dir``, until its final checkpoint and ``.pth`` are written;
    its logged steps and the GPU memory it took (None in a dry run)."""
    flags = [*run.flags, "--deepspeed_config", str(ds_config), "--accumulation_steps", "1", "--max_steps",
             str(run.steps), "--log_interval", "1", "--save_interval", SAVE_INTERVAL]
    log_path = check.logs / f"{run.name}.log"
    memory = GpuMemoryPeak() if check.profile.on_gpu else None
    try:
        with memory or contextlib.nullcontext():
            records = train(run.name, 1, flags, save_dir, log_path, check.time_left(), env=run.env)
    except SystemExit as stopped:
        raise PartFailed(failure_reason(str(stopped), log_path)) from None
    except ReportError as error:
        raise PartFailed(f"{error} (log: {log_path})") from None
    if not list(save_dir.glob("pretrain_*.pth")):
        raise PartFailed(f"the run wrote its checkpoint but no .pth weights (log: {log_path})")
    return records, memory


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


def summarize_training(figures: dict, aux_loss: bool) -> str:
    """The figures in a few words: tokens/s, MFU, losses, memory against the plan, loss scaling, the loss
    difference with another run, and with ``aux_loss`` the MoE aux loss."""
    parts = [f"{figures['tokens_per_s']:,.0f} tok/s", f"MFU {figures['mfu']:.1%}",
             f"loss {figures['first_loss']:.3f}->{figures['last_loss']:.3f}"]
    if "peak_gib" in figures:
        parts.append(f"peak {figures['peak_gib']:.2f} GiB")
    if figures.get("plan_total_gib") is not None:
        parts.append(f"plan {figures['plan_total_gib']:.2f} GiB")
    if figures["loss_scale"] is not None:
        parts.append(f"loss scale {figures['loss_scale']:g}, {figures['skipped_steps']} skipped")
    if "max_loss_difference" in figures:
        parts.append(f"max |loss - {figures['loss_compared_with']}'s| {figures['max_loss_difference']:.2g}")
    if aux_loss:
        parts.append(f"aux loss {figures['aux_loss']:.4f}")
    return ", ".join(parts)


def train_and_measure(check: Check, run: TrainingRun, keep_checkpoint: bool) -> tuple[list[dict], dict]:
    """Launch ``run``; its logged steps and its figures: throughput and losses from its metrics, memory
    against the plan. The run's checkpoint and weights are deleted, unless ``keep_checkpoint`` and it
    succeeded."""
    save_dir = check.runs / run.name
    ds_config = ds_config_path(check, run)
    try:
        records, memory = launch_training(check, run, ds_config, save_dir)
        figures = {**training_figures(run, records), **memory_figures(check, run, memory)}
    except BaseException:
        remove_weights(save_dir)
        raise
    if not keep_checkpoint:
        remove_weights(save_dir)
    if not figures["tokens_per_s"] > 0:
        raise PartFailed(f"tokens_per_s {figures['tokens_per_s']} in {save_dir / 'metrics.jsonl'}")
    shown_config = ds_config.relative_to(REPO_ROOT) if ds_config.is_relative_to(REPO_ROOT) else ds_config
    return records, {**figures, "aux_loss": records[-1]["aux_loss"], "ds_config": str(shown_config),
                     "flags": run.flags, "env": run.env}


@dataclass(frozen=True)
class TrainingPart:
    """The part that trains ``training``. With ``compare_with`` (an earlier training part of the same model),
    the largest loss difference between the two at the same steps; ``keep_checkpoint`` keeps the checkpoint
    for a later part (``hf_generate``)."""

    training: TrainingRun
    compare_with: str | None = None
    keep_checkpoint: bool = False

    def __call__(self, check: Check) -> Passed:
        """Train, measure and compare; the figures in a few words and in full."""
        if self.training.skip_reason:
            raise PartSkipped(self.training.skip_reason)
        records, figures = train_and_measure(check, self.training, self.keep_checkpoint)
        compared = check.results.get(self.compare_with)
        if compared is not None and compared.status == "pass":
            losses = {r["step"]: r["loss"] for r in read_metrics_file(check.runs / self.compare_with).training}
            figures.update(loss_compared_with=self.compare_with, max_loss_difference=max(
                abs(r["loss"] - losses[r["step"]]) for r in records if r["step"] in losses))
        return Passed(summarize_training(figures, self.training.moe), figures)
