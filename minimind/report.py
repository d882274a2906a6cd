"""Report on a training run folder: its curves in report.png, a summary in report.md.

    python -m minimind.report out
    python -m minimind.report out --output out/report_2026-12-01

A save folder shared by MiniMind's stages (``out`` after ``pretrain_ds.py``, ``sft_ds.py`` and ``dpo_ds.py``)
holds each later stage's run in ``{save_dir}/{save_weight}/``: the report covers the folder's own run and each
of those, and draws every stage's losses side by side in ``stages.png``.

Reads what a run writes in SAVE_DIR: ``metrics.jsonl`` (training and validation rows; other
code that reads a run's metrics, the benchmarks and the tests, reads them with ``read_metrics_file``),
``samples.jsonl`` and ``run_settings.json`` where present. Writes ``report.png`` (the curves:
loss against step and against tokens seen, learning rate, gradient norm, tokens/s and MFU, MoE
aux loss when there is one) and ``report.md`` (run settings, progress, losses, throughput, the
latest samples) into ``--output`` (default SAVE_DIR), and prints both paths.

A resumed run appends to the same files, restarting from its checkpoint's step: ``join_segments``
keeps the rows the resumed run wrote in place of the ones it repeats. A missing folder or
``metrics.jsonl``, or a line that is not a JSON object with an integer ``step``, is one line on
stderr naming the file and line, and exit status 2. This module does not import DeepSpeed (the
``minimind`` package loads torch and transformers); matplotlib draws with Agg, never a display.
"""

import argparse
import json
import math
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from minimind.errors import UserInputError
from minimind.flags import FlagParser
from minimind.training.run_dir.files import (
    METRICS_FILE,
    REPORT_IMAGE,
    REPORT_MARKDOWN,
    RUN_SETTINGS_FILE,
    SAMPLES_FILE,
    is_validation_record,
)

FIGURE_INCHES = (12, 8)  # legible at README width
STAGES_IMAGE = "stages.png"  # every stage's losses side by side, in a save folder shared by several
FIGURE_DPI = 110
RESUME_STYLE = {"color": "grey", "linestyle": "--", "linewidth": 0.8}
SKIPPED_STYLE = {"color": "tab:red", "marker": "|", "markersize": 12, "linestyle": "none"}


class ReportError(UserInputError):
    """A run folder the report cannot read, or an output folder it cannot write to; the message
    names the file and, where there is one, the line (1-based)."""

    def __init__(self, path: Path, line: int | None, reason: str):
        where = str(path) if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {reason}")


@dataclass
class JoinedSeries:
    """Rows of one kind (training, validation or samples) joined across a run's resumed segments."""

    rows: list[dict]  # ascending step; a resumed segment's rows replace the earlier rows from its first step on
    resume_steps: list[int]  # first step of each resumed segment whose rows are still in ``rows``
    resumes: int  # segments that followed another, counting those a later resume replaced


@dataclass
class MetricsRows:
    """A run's ``metrics.jsonl`` by kind, each in file order: a resumed run's rows follow the rows they
    repeat (``join_segments`` joins them)."""

    training: list[dict]  # one per logged step
    validation: list[dict]  # one per evaluation


@dataclass
class RunLog:
    """Everything the report reads from one run folder."""

    save_dir: Path
    training: JoinedSeries
    validation: JoinedSeries
    samples: JoinedSeries
    settings: dict | None  # run_settings.json, the latest run's; None when absent


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of ``path``, one a line (blank lines skipped), each with an integer ``step``;
    ``ReportError`` naming the file and line otherwise."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise ReportError(path, None, f"cannot read ({error.strerror or error})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
            raise ReportError(path, number, f"not valid JSON ({reason})") from None
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise ReportError(path, number, 'not a JSON object with an integer "step"')
        rows.append(row)
    return rows


def join_segments(rows: list[dict]) -> JoinedSeries:
    """Join rows of one kind, in file order, across resumed segments.

    A row whose step is at most the previous row's starts a new segment, and the rows before it
    with a step at least its own are dropped (the resumed run's rows replace them). Rows sharing
    a step with different ``prompt``s (``samples.jsonl``: one row per prompt) stay together; a
    prompt repeated at the same step starts a new segment like any repeated step.
    """
    kept: list[dict] = []
    resume_steps: list[int] = []
    resumes = 0
    prompts_at_step: set = set()
    for row in rows:
        step = row["step"]
        same_step_group = bool(kept) and step == kept[-1]["step"] and row.get("prompt") not in prompts_at_step
        if kept and step <= kept[-1]["step"] and not same_step_group:
            resumes += 1
            while kept and kept[-1]["step"] >= step:
                kept.pop()
            resume_steps = [start for start in resume_steps if start < step] + [step]
        if not same_step_group:
            prompts_at_step = set()
        prompts_at_step.add(row.get("prompt"))
        kept.append(row)
    return JoinedSeries(kept, resume_steps, resumes)


def load_run(save_dir: Path) -> RunLog:
    """Read and join a run folder's metrics, samples and settings; ``ReportError`` when
    ``metrics.jsonl`` is missing, has no training rows, or has a bad line."""
    if not save_dir.is_dir():
        raise ReportError(save_dir, None, "no such folder")
    metrics = read_metrics_file(save_dir)
    if not metrics.training:
        raise ReportError(save_dir / METRICS_FILE, None, "no training rows" if metrics.validation else "empty")
    samples_path = save_dir / SAMPLES_FILE
    samples = read_jsonl(samples_path) if samples_path.is_file() else []
    return RunLog(
        save_dir=save_dir,
        training=join_segments(metrics.training),
        validation=join_segments(metrics.validation),
        samples=join_segments(samples),
        settings=read_run_settings(save_dir / RUN_SETTINGS_FILE),
    )


def read_metrics_file(save_dir: Path) -> MetricsRows:
    """The training and validation rows of ``{save_dir}/metrics.jsonl``; ``ReportError`` when the file is
    missing or has a bad line."""
    metrics_path = save_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise ReportError(metrics_path, None, "no such file (is this a training run's --save_dir?)")
    rows = read_jsonl(metrics_path)
    return MetricsRows(training=[row for row in rows if not is_validation_record(row)],
                       validation=[row for row in rows if is_validation_record(row)])


def read_run_settings(path: Path) -> dict | None:
    """``run_settings.json`` as a dict; None when absent, ``ReportError`` when unreadable."""
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_bytes())
    except OSError as error:
        raise ReportError(path, None, f"cannot read ({error.strerror or error})") from None
    except ValueError:
        raise ReportError(path, None, "not valid JSON") from None
    if not isinstance(settings, dict):
        raise ReportError(path, None, "not a JSON object")
    return settings


def is_number(value) -> bool:
    """True for a JSON number: an int or float, not a bool (NaN and inf included)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """True for a JSON number that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)


def finite_points(rows: list[dict], x_key: str, y_key: str, scale: float = 1.0) -> tuple[list, list]:
    """``(xs, ys)`` of the rows whose ``x_key`` and ``y_key`` are both finite numbers, ``y`` times ``scale``."""
    points = [(row[x_key], row[y_key] * scale) for row in rows
              if is_finite_number(row.get(x_key)) and is_finite_number(row.get(y_key))]
    return [x for x, _ in points], [y for _, y in points]


def skipped_step_marks(rows: list[dict]) -> list[int]:
    """Steps of the joined training rows at which the cumulative ``skipped_steps`` count went up."""
    marks, previous = [], 0
    for row in rows:
        count = row.get("skipped_steps")
        if not is_finite_number(count):
            continue
        if count > previous:
            marks.append(row["step"])
        previous = count
    return marks


def has_tokens_seen(run: RunLog) -> bool:
    """Whether every training and validation row carries ``tokens_seen`` (files from older versions do not)."""
    return all(is_finite_number(row.get("tokens_seen")) for row in run.training.rows + run.validation.rows)


def draw_report(run: RunLog, path: Path) -> None:
    """Draw the run's curves into one PNG at ``path``, 12 x 8 inches at 110 dpi: loss against step and
    against tokens seen, learning rate, gradient norm, tokens/s with MFU, and MoE aux loss when nonzero."""
    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    rows = run.training.rows
    last = rows[-1]
    figure.suptitle(f"{run.save_dir.name or run.save_dir}: step {last['step']} of {last.get('total_steps', '?')}")
    skipped = skipped_step_marks(rows)
    aux_x, aux_y = finite_points(rows, "step", "aux_loss")
    preferences = any("reward_margin" in row for row in rows)  # a DPO run
    count = 5 + bool(any(aux_y)) + preferences
    axes = [figure.add_subplot(2, 3 if count <= 6 else 4, index + 1) for index in range(count)]
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.set_xlabel("step")

    draw_losses(axes[0], run, "step", skipped)
    axes[0].set_title("loss against step")
    if has_tokens_seen(run):
        tokens_at = {row["step"]: row["tokens_seen"] for row in rows}
        resumes = [tokens_at[step] for step in run.training.resume_steps]
        draw_losses(axes[1], run, "tokens_seen", [tokens_at[step] for step in skipped], resumes)
        axes[1].set_title("loss against tokens seen")
        axes[1].set_xlabel("tokens seen")
        axes[1].xaxis.set_major_formatter(EngFormatter())
    else:
        draw_losses(axes[1], run, "step", skipped)
        axes[1].set_title("loss against step (tokens_seen not logged)")

    draw_line(axes[2], *finite_points(rows, "step", "lr"), color="tab:green")
    axes[2].set_title("learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    norm_x, norm_y = finite_points(rows, "step", "grad_norm")
    draw_line(axes[3], norm_x, norm_y, color="tab:purple")
    if norm_y and min(norm_y) > 0 and max(norm_y) > 10 * min(norm_y):
        axes[3].set_yscale("log")  # a spike ten times the rest would flatten them on a linear scale
    mark_skipped(axes[3], skipped)
    axes[3].set_title("gradient norm")

    draw_line(axes[4], *finite_points(rows, "step", "tokens_per_s"), color="tab:blue")
    axes[4].yaxis.set_major_formatter(EngFormatter())
    axes[4].set_ylabel("tokens/s", color="tab:blue")
    mfu_axis = axes[4].twinx()
    draw_line(mfu_axis, *finite_points(rows, "step", "mfu", scale=100.0), color="tab:orange")
    mfu_axis.set_ylabel("MFU (%)", color="tab:orange")
    axes[4].set_title("throughput")

    if any(aux_y):
        draw_line(axes[5], aux_x, aux_y, color="tab:brown")
        axes[5].set_title("MoE aux loss")
    if preferences:
        draw_rewards(axes[-1], run)
    for axis in axes[2:]:
        mark_resumes(axis, run.training.resume_steps)
    figure.savefig(path)


def draw_rewards(axis, run: RunLog) -> None:
    """A DPO run's implicit rewards of the chosen and rejected answers and their margin against step, and the
    share of pairs preferred rightly (training, and held out: markers) on a second axis."""
    for key, color in (("reward_chosen", "tab:green"), ("reward_rejected", "tab:red"), ("reward_margin", "black")):
        draw_line(axis, *finite_points(run.training.rows, "step", key), color=color, label=key.split("_")[1])
    axis.set_ylabel("reward")
    axis.legend(loc="upper left", fontsize="small")
    accuracy = axis.twinx()
    draw_line(accuracy, *finite_points(run.training.rows, "step", "reward_accuracy", scale=100.0), color="tab:orange",
              alpha=0.5)
    val_x, val_y = finite_points(run.validation.rows, "step", "val_reward_accuracy", scale=100.0)
    if val_x:
        accuracy.plot(val_x, val_y, "o-", color="tab:orange", markersize=4)
    accuracy.set_ylabel("preference accuracy (%)", color="tab:orange")
    axis.set_title("DPO rewards")


def draw_stages(runs: list[RunLog], path: Path) -> None:
    """Each stage's training and validation loss against its steps, side by side in one PNG at ``path``."""
    figure = Figure(figsize=(4 * len(runs), 3.5), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    for index, run in enumerate(runs, start=1):
        axis = figure.add_subplot(1, len(runs), index)
        axis.grid(alpha=0.3)
        axis.set_xlabel("step")
        draw_losses(axis, run, "step", skipped_step_marks(run.training.rows))
        axis.set_title(stage_name(run))
    figure.savefig(path)


def stage_name(run: RunLog) -> str:
    """The run's stage as its settings record it (``pretrain`` in runs from before stages), and its folder."""
    stage = (run.settings or {}).get("stage", "pretrain")
    return f"{stage} ({run.save_dir.name or run.save_dir})"


def draw_losses(axis, run: RunLog, x_key: str, skipped: list, resumes: list | None = None) -> None:
    """Training loss (line) and validation loss (markers and line) against ``x_key``, with the
    resume points (``resumes``, default the training resume steps) and skipped steps marked."""
    draw_line(axis, *finite_points(run.training.rows, x_key, "loss"), color="tab:blue", label="training")
    val_x, val_y = finite_points(run.validation.rows, x_key, "val_loss")
    if val_x:
        axis.plot(val_x, val_y, "o-", color="tab:orange", markersize=4, label="validation")
    mark_resumes(axis, run.training.resume_steps if resumes is None else resumes, label="resume")
    mark_skipped(axis, skipped)
    axis.set_ylabel("loss")
    axis.legend(loc="upper right", fontsize="small")


def draw_line(axis, xs: list, ys: list, **style) -> None:
    """A line through the points, or a marker when there is only one."""
    axis.plot(xs, ys, marker="o" if len(xs) == 1 else None, **style)


def mark_resumes(axis, positions: list, label: str | None = None) -> None:
    """A thin vertical line at each resume point (``label`` on the first, for a legend)."""
    for index, position in enumerate(positions):
        axis.axvline(position, label=label if index == 0 else None, **RESUME_STYLE)


def mark_skipped(axis, positions: list) -> None:
    """A red tick at the bottom of the panel at each position where optimizer steps were skipped."""
    if positions:
        axis.plot(positions, [0.0] * len(positions), transform=axis.get_xaxis_transform(), clip_on=False,
                  label="skipped steps", **SKIPPED_STYLE)


def markdown_report(run: RunLog, image_name: str = REPORT_IMAGE) -> str:
    """The Markdown report: run settings, progress, losses, throughput, resumes, latest samples, and the figure."""
    lines = [f"# Training report: `{run.save_dir}`", "", f"![training curves]({image_name})", "",
             "## Run settings", ""]
    if run.settings is None:
        lines.append(f"No `{RUN_SETTINGS_FILE}` in the run folder.")
    else:
        lines += ["| setting | value |", "| --- | --- |"]
        lines += [f"| {name} | {table_cell(format_setting(name, value))} |" for name, value in run.settings.items()]
    lines += ["", "## Progress", "", "| | |", "| --- | --- |"]
    lines += [f"| {name} | {table_cell(value)} |" for name, value in progress_facts(run)]
    lines += ["", *latest_samples(run.samples.rows)]
    return "\n".join(lines) + "\n"


def progress_facts(run: RunLog) -> list[tuple[str, str]]:
    """``(name, value)`` rows of the progress table."""
    rows = run.training.rows
    last = rows[-1]
    facts = [("steps done", f"{last['step']} / {last.get('total_steps', '?')}"),
             ("final training loss", f"{format_loss(last.get('loss'))} at step {last['step']}")]
    finite_val = [row for row in run.validation.rows if is_finite_number(row.get("val_loss"))]
    if run.validation.rows:
        facts.append(("final validation loss", format_validation(run.validation.rows[-1])))
    else:
        facts.append(("validation loss", "no validation rows"))
    if finite_val:
        facts.append(("best validation loss", format_validation(min(finite_val, key=lambda row: row["val_loss"]))))
    tokens = last.get("tokens_seen")
    facts.append(("tokens seen", f"{tokens:,.0f}" if is_finite_number(tokens) else "not logged"))
    segment_start = run.training.resume_steps[-1] if run.training.resume_steps else rows[0]["step"]
    segment = [row for row in rows if row["step"] >= segment_start]
    where = f"steps {segment_start}-{last['step']}"
    facts.append((f"median tokens/s ({where})", format_median(segment, "tokens_per_s", "{:,.0f}")))
    facts.append((f"median MFU ({where})", format_median(segment, "mfu", "{:.1%}")))
    skipped = last.get("skipped_steps")
    facts.append(("skipped steps", f"{skipped:,.0f}" if is_finite_number(skipped) else "not logged"))
    resumed_at = ", ".join(str(step) for step in run.training.resume_steps)
    facts.append(("resumes", f"{run.training.resumes} (at step {resumed_at})" if resumed_at
                  else str(run.training.resumes)))
    return facts


def format_loss(value) -> str:
    """A loss with four decimals (NaN and inf as ``nan`` and ``inf``); "not logged" when missing."""
    return f"{value:.4f}" if is_number(value) else "not logged"


def format_validation(row: dict) -> str:
    """``loss (perplexity p) at step s`` of one validation row (DPO's: ``loss (preference accuracy a)``)."""
    if "val_reward_accuracy" in row:
        accuracy = row["val_reward_accuracy"]
        accuracy_text = f"{accuracy:.1%}" if is_number(accuracy) else "not logged"
        return f"{format_loss(row.get('val_loss'))} (preference accuracy {accuracy_text}) at step {row['step']}"
    ppl = row.get("val_ppl")
    ppl_text = f"{ppl:,.2f}" if is_number(ppl) else "not logged"
    return f"{format_loss(row.get('val_loss'))} (perplexity {ppl_text}) at step {row['step']}"


def format_median(rows: list[dict], key: str, template: str) -> str:
    """The median of the rows' finite ``key`` values, formatted; "not logged" when there are none."""
    values = [row[key] for row in rows if is_finite_number(row.get(key))]
    return template.format(statistics.median(values)) if values else "not logged"


def format_setting(name: str, value) -> str:
    """One run_settings.json value as table text: the command as a shell line, the mixture's sources with
    their shares, the model config as ``key=value`` pairs, integers with thousands separators."""
    if name == "command" and isinstance(value, list):
        return f"`{shlex.join(str(part) for part in value)}`"
    if name == "mixture" and isinstance(value, list):
        return "; ".join(f"{source['source']}: weight {source['weight']:g}, {source['token_share']:.1%} of the tokens, "
                         f"{source['passes_per_epoch']:.2f} passes per epoch" for source in value)
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def latest_samples(samples: list[dict]) -> list[str]:
    """Markdown lines showing the last step's samples, prompt then text, each in a code block."""
    if not samples:
        return []
    step = samples[-1]["step"]
    lines = [f"## Samples at step {step}", ""]
    for row in samples:
        if row["step"] == step:
            lines += ["Prompt:", "", *code_block(str(row.get("prompt", ""))), "",
                      "Text:", "", *code_block(str(row.get("text", ""))), ""]
    return lines


def code_block(text: str) -> list[str]:
    """A fenced code block holding ``text``, its fence longer than any backtick run inside."""
    fence = "`" * 3
    while fence in text:
        fence += "`"
    return [fence + "text", text, fence]


def write_report(run: RunLog, output: Path) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.md`` into ``output`` (created if needed); their paths."""
    image, markdown = output / REPORT_IMAGE, output / REPORT_MARKDOWN
    if output.exists() and not output.is_dir():
        raise ReportError(output, None, "not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
        draw_report(run, image)
        markdown.write_text(markdown_report(run, REPORT_IMAGE), encoding="utf-8")
    except OSError as error:
        raise ReportError(Path(error.filename or output), None, f"cannot write ({error.strerror or error})") from None
    return image, markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """SAVE_DIR and ``--output``; a bad flag is a one-line ``ConfigError``."""
    parser = FlagParser(prog="python -m minimind.report", description=__doc__.splitlines()[0])
    parser.add_argument("save_dir", type=Path, metavar="SAVE_DIR",
                        help="the run's --save_dir (holding metrics.jsonl, or later stages' folders that do)")
    parser.add_argument("--output", type=Path, default=None, metavar="DIR",
                        help="folder for report.png and report.md (default: SAVE_DIR); a later stage's go in a "
                             "subfolder of it named as the stage's folder")
    return parser.parse_args(argv)


def stage_folders(save_dir: Path) -> list[Path]:
    """The runs a save folder holds: its own (a ``metrics.jsonl`` in it), then each later stage's folder
    (``{save_dir}/{save_weight}/`` with a ``metrics.jsonl``), by name; ``ReportError`` when there is none."""
    if not save_dir.is_dir():
        raise ReportError(save_dir, None, "no such folder")
    folders = [save_dir] if (save_dir / METRICS_FILE).is_file() else []
    folders += sorted(path.parent for path in save_dir.glob(f"*/{METRICS_FILE}"))
    if not folders:
        read_metrics_file(save_dir)  # raises, naming the missing file
    return folders


def in_stage_order(save_dir: Path, runs: list[RunLog]) -> list[RunLog]:
    """The save folder's own run first, then the later stages' in the order they started (``run_settings.json``),
    those without settings last, by name."""
    return sorted(runs, key=lambda run: (run.save_dir != save_dir, (run.settings or {}).get("started") or "~",
                                         run.save_dir.name))


def main(argv: list[str] | None = None) -> int:
    """Write the report of every run the folder holds and print their paths (and ``stages.png``'s, with several
    stages); bad input is one line on stderr and exit status 2."""
    try:
        args = parse_args(argv)
        output = args.output or args.save_dir
        runs = in_stage_order(args.save_dir, [load_run(folder) for folder in stage_folders(args.save_dir)])
        paths = [path for run in runs
                 for path in write_report(run, output / run.save_dir.relative_to(args.save_dir))]
        if len(runs) > 1:
            paths.append(output / STAGES_IMAGE)
            draw_stages(runs, paths[-1])
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
