"""Training metrics: the log line, ``metrics.jsonl`` and, when asked, Weights & Biases.

Everything here runs on global rank 0 only; other ranks get a logger that does nothing.
"""

import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from minimind.errors import MissingDependencyError
from minimind.training.distributed.rank_print import print0
from minimind.training.distributed.world import global_rank
from minimind.training.evaluation.validation_loss import EvalResult
from minimind.training.position import TrainingPosition
from minimind.training.run_dir.files import METRICS_FILE, SAMPLES_FILE


@dataclass
class StepMetrics:
    """What one logged optimizer step reports."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    aux_loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens_seen: int  # input tokens trained on since the start (samples x tokens per sample)
    mfu: float
    loss_scale: float | None
    skipped_steps: int
    eta_s: float
    extra: dict[str, float] = field(default_factory=dict)  # the stage's own figures (DPO's rewards, accuracy)


class ThroughputMeter:
    """Target tokens per second over each log window, and wall seconds per step since the start.

    Counts may be accelerator tensors: they are added up there and read once per window. Time spent
    ``paused()`` (evaluations, checkpoint saves) is left out of the window's tokens per second, not
    out of the seconds per step an ETA is made of.
    """

    def __init__(self, start_step: int):
        self.started = self.window_start = time.perf_counter()
        self.start_step = start_step
        self.window_tokens = 0

    def count(self, tokens: int | torch.Tensor) -> None:
        """Add one step's target tokens (a number, or a tensor not read until ``read``) to the current window."""
        self.window_tokens += tokens

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time inside the ``with`` block out of the current window."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.window_start += time.perf_counter() - start

    def read(self, step: int) -> tuple[float, float]:
        """``(tokens per second in the window, seconds per step so far)`` at ``step``; starts a new window."""
        now = time.perf_counter()
        tokens_per_s = float(self.window_tokens) / max(now - self.window_start, 1e-9)
        seconds_per_step = (now - self.started) / max(step - self.start_step, 1)
        self.window_start, self.window_tokens = now, 0
        return tokens_per_s, seconds_per_step


class MetricsLogger:
    """Prints the log line and appends one JSON object per logged step to ``{save_dir}/metrics.jsonl``.

    Attached to a terminal, rank 0 also shows a progress bar over the optimizer steps.
    """

    def __init__(self, save_dir: Path, use_wandb: bool, wandb_project: str, wandb_run_id: str | None,
                 run_config: dict, monitor=None):
        """``monitor``: the engine's DeepSpeed ``MonitorMaster`` (TensorBoard/CSV/... from the JSON)."""
        self.enabled = global_rank() == 0
        self.monitor = monitor if monitor is not None and monitor.enabled else None
        self.path = Path(save_dir) / METRICS_FILE
        self.samples_path = Path(save_dir) / SAMPLES_FILE
        self.wandb_run = None
        self.wandb_run_id = wandb_run_id
        self.progress = None
        if self.enabled and use_wandb:
            self.wandb_run = start_wandb(wandb_project, wandb_run_id, run_config, Path(save_dir))
            self.wandb_run_id = self.wandb_run.id

    def start_progress(self, total_steps: int, steps_done: int) -> None:
        """Show a progress bar over the optimizer steps when rank 0's stdout is a terminal."""
        if self.enabled and sys.stdout.isatty():
            self.progress = tqdm(total=total_steps, initial=steps_done, unit="step", dynamic_ncols=True)

    def advance(self) -> None:
        """One optimizer step done."""
        if self.progress is not None:
            self.progress.update()

    def log(self, metrics: StepMetrics) -> None:
        """Report one optimizer step."""
        if not self.enabled:
            return
        scale = f" scale {metrics.loss_scale:g}" if metrics.loss_scale is not None else ""
        skipped = f" skipped {metrics.skipped_steps}" if metrics.skipped_steps else ""
        extra = "".join(f" {name} {value:.4f}" for name, value in metrics.extra.items())
        self.write_line(
            f"epoch {metrics.epoch} step {metrics.step}/{metrics.total_steps} loss {metrics.loss:.4f}{extra} "
            f"aux {metrics.aux_loss:.4f} lr {metrics.lr:.3e} grad_norm {metrics.grad_norm:.3f}{scale}{skipped} "
            f"tokens/s {metrics.tokens_per_s:,.0f} mfu {metrics.mfu:.1%} eta {format_seconds(metrics.eta_s)}"
        )
        record = asdict(metrics)
        record.update(record.pop("extra"))
        record["time"] = time.time()
        append_json_lines(self.path, [record])
        numbers = {k: v for k, v in record.items() if v is not None and k not in ("step", "total_steps", "time")}
        self.publish("Train", numbers, metrics.step)

    def log_eval(self, position: TrainingPosition, result: EvalResult) -> None:
        """Report one evaluation (``EvalResult``) at ``position``: a line, a ``metrics.jsonl`` row, wandb, monitors."""
        if not self.enabled:
            return
        ppl = f" val_ppl {result.val_ppl:.2f}" if result.perplexity else ""
        extra = "".join(f" {name} {value:.4f}" for name, value in result.extra.items())
        self.write_line(f"step {position.step}: val_loss {result.val_loss:.4f}{ppl}{extra} "
                        f"over {result.eval_tokens:,} eval tokens")
        numbers = result.figures()
        append_json_lines(self.path, [{"step": position.step, **numbers, "tokens_seen": position.tokens_seen,
                                       "time": time.time()}])
        self.publish("Eval", numbers, position.step)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Append ``{"step", "prompt", "text"}`` per sample to ``samples.jsonl`` (and a wandb table)."""
        if not self.enabled:
            return
        append_json_lines(self.samples_path, [{"step": step, **row} for row in rows])
        if self.wandb_run is not None:
            import wandb  # present: the run started
            table = wandb.Table(columns=["step", "prompt", "text"], data=[[step, r["prompt"], r["text"]] for r in rows])
            self.wandb_run.log({"samples": table}, step=step)

    def write_line(self, line: str) -> None:
        """One log line, above the progress bar when there is one."""
        (self.progress.write if self.progress is not None else print0)(line)

    def publish(self, section: str, numbers: dict, step: int) -> None:
        """``numbers`` to wandb (under their names) and to DeepSpeed's monitors (as ``{section}/{name}``)."""
        if self.wandb_run is not None:
            self.wandb_run.log(numbers, step=step)
        if self.monitor is not None:
            self.monitor.write_events([(f"{section}/{name}", value, step) for name, value in numbers.items()])

    def checkpoint_state(self) -> dict:
        """``wandb_run_id``: a resumed run logs on into the same Weights & Biases run (a checkpoint part)."""
        return {"wandb_run_id": self.wandb_run_id}

    def close(self) -> None:
        """Close the progress bar and finish the wandb run, if any."""
        if self.progress is not None:
            self.progress.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def append_json_lines(path: Path, records: list[dict]) -> None:
    """Append one JSON object a line to ``path``."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))


def check_wandb_installed() -> None:
    """Raise ``MissingDependencyError`` when ``--use_wandb`` cannot work: wandb is not installed."""
    if importlib.util.find_spec("wandb") is None:
        raise MissingDependencyError("--use_wandb needs the wandb package: pip install wandb")


def start_wandb(project: str, run_id: str | None, run_config: dict, save_dir: Path):
    """Start (or resume, by id) a wandb run writing under ``save_dir``; offline when no login is configured."""
    import wandb  # checked at start-up by check_wandb_installed
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
    return wandb.init(project=project, id=run_id, resume="allow", config=run_config, dir=save_dir)


def format_seconds(seconds: float) -> str:
    """``1h02m03s`` style."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def model_flops_per_token(config, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token of a MiniMind model (PaLM's convention, as MFU is usually quoted).

    ``6 * active parameters`` (the tied embedding counted once, as the output matmul; for MoE
    only the k routed experts a token visits, plus the shared ones and the router) plus
    attention's ``12 * layers * hidden * seq_len``.
    """
    active = n_params
    if config.use_moe:
        expert = 3 * config.hidden_size * config.expert_intermediate_size
        idle = config.expert_count - config.num_experts_per_tok
        active -= idle * expert * config.num_hidden_layers
    return 6.0 * active + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len
