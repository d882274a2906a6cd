"""``python -m minimind.report``: joining resumed segments, the figure and the Markdown, bad input.

Every run folder is written by hand here, so the expected series and numbers are known
independently of the code under test.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from minimind.report import join_segments, main, skipped_step_marks

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_SHAPE = (880, 1320)  # 8 x 12 inches at 110 dpi


def training_row(step: int, run: str, **fields) -> dict:
    """A training row of ``metrics.jsonl``; ``run`` tags which segment wrote it (an extra key the report ignores)."""
    row = {"step": step, "total_steps": 200, "epoch": 0, "loss": 10.0 - step / 50 - (run == "B"), "aux_loss": 0.0,
           "lr": 1e-3, "grad_norm": 1.0 + step / 100, "tokens_per_s": 100.0 if run == "A" else 200.0,
           "mfu": 0.1, "loss_scale": None, "skipped_steps": 0, "eta_s": 10.0, "tokens_seen": 1000 * step,
           "time": 1.0e9 + step, "run": run}
    return row | fields


def validation_row(step: int, run: str, val_loss: float) -> dict:
    """A validation row of ``metrics.jsonl``."""
    return {"step": step, "val_loss": val_loss, "val_ppl": math.exp(val_loss), "eval_tokens": 4096,
            "tokens_seen": 1000 * step, "time": 1.0e9 + step, "run": run}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """``rows`` as JSON Lines (NaN and inf as Python's json writes them)."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def check_png(path: Path) -> None:
    """``path`` is a PNG of the report's size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert imread(path).shape[:2] == IMAGE_SHAPE


def table_value(markdown: str, name: str) -> str:
    """The value cell of the report table row named ``name``."""
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, f"no single row {name!r} in the report"
    return rows[0].split(" | ")[1].rstrip(" |")


# A run that crashed after step 150 and resumed from its step-100 checkpoint: run A logged
# 1..150 (validation at 50, 100, 150; samples at 100 and 150), run B 101..200 (validation at 150
# and 200; samples at 200), one skipped step between 150 and 160. Run A's validation at 150
# (1.0) is the lowest loss in the file, but run B's rows replace it.
RUN_A_VALIDATION = {50: 3.0, 100: 2.8, 150: 1.0}
RUN_B_VALIDATION = {150: 2.5, 200: 2.6}
EXPECTED_VALIDATION = [(50, "A", 3.0), (100, "A", 2.8), (150, "B", 2.5), (200, "B", 2.6)]


def resumed_metrics() -> list[dict]:
    """The rows of the resumed run above, in the order the two runs appended them."""
    rows = []
    for step in range(1, 151):
        rows.append(training_row(step, "A"))
        if step in RUN_A_VALIDATION:
            rows.append(validation_row(step, "A", RUN_A_VALIDATION[step]))
    for step in range(101, 201):
        rows.append(training_row(step, "B", skipped_steps=int(step >= 160)))
        if step in RUN_B_VALIDATION:
            rows.append(validation_row(step, "B", RUN_B_VALIDATION[step]))
    return rows


@pytest.fixture
def resumed_run(tmp_path) -> Path:
    """A run folder holding the resumed run's metrics, samples and settings."""
    write_jsonl(tmp_path / "metrics.jsonl", resumed_metrics())
    write_jsonl(tmp_path / "samples.jsonl", [
        {"step": 100, "prompt": "Once", "text": "Once A100"}, {"step": 100, "prompt": "The", "text": "The A100"},
        {"step": 150, "prompt": "Once", "text": "Once A150"}, {"step": 150, "prompt": "The", "text": "The A150"},
        {"step": 200, "prompt": "Once", "text": "Once B200 ```x```"},
        {"step": 200, "prompt": "The", "text": "The B200"},
    ])
    settings = {"command": ["deepspeed", "pretrain_ds.py", "--from_resume", "1"], "started": "2026-12-01T10:00:00",
                "resumed_from_step": 100, "world_size": 2, "precision": "bf16", "zero_stage": 2, "micro_batch": 8,
                "accumulation": 1, "global_batch": 16, "max_seq_len": 128, "parameters": 1_600_000,
                "model": {"hidden_size": 128, "num_hidden_layers": 4, "use_moe": False}, "data": "corpus.jsonl",
                "eval": None}
    (tmp_path / "run_settings.json").write_text(json.dumps(settings), encoding="utf-8")
    return tmp_path


def test_join_segments_keeps_the_resumed_rows():
    """Steps 1..150 then 101..200: run A's rows up to 100, then run B's; validation likewise."""
    rows = resumed_metrics()
    training = join_segments([row for row in rows if "val_loss" not in row])
    expected = [(step, "A") for step in range(1, 101)] + [(step, "B") for step in range(101, 201)]
    assert [(row["step"], row["run"]) for row in training.rows] == expected
    assert (training.resume_steps, training.resumes) == ([101], 1)
    assert skipped_step_marks(training.rows) == [160]

    validation = join_segments([row for row in rows if "val_loss" in row])
    assert [(row["step"], row["run"], row["val_loss"]) for row in validation.rows] == EXPECTED_VALIDATION
    assert (validation.resume_steps, validation.resumes) == ([150], 1)


def test_join_segments_with_several_resumes_and_samples():
    """A later resume from an earlier step replaces an earlier resume, whose point is no longer marked;
    samples sharing a step stay together until a prompt repeats."""
    steps = [1, 2, 3, 4, 5, 4, 5, 6, 3, 4]
    joined = join_segments([{"step": step, "index": index} for index, step in enumerate(steps)])
    assert [(row["step"], row["index"]) for row in joined.rows] == [(1, 0), (2, 1), (3, 8), (4, 9)]
    assert (joined.resume_steps, joined.resumes) == ([3], 2)

    samples = [{"step": 10, "prompt": "a"}, {"step": 10, "prompt": "b"}, {"step": 20, "prompt": "a"},
               {"step": 20, "prompt": "b"}, {"step": 20, "prompt": "a"}, {"step": 20, "prompt": "b"}]
    for index, row in enumerate(samples):
        row["index"] = index
    joined = join_segments(samples)
    assert [row["index"] for row in joined.rows] == [0, 1, 4, 5]
    assert (joined.resume_steps, joined.resumes) == ([20], 1)


def test_report_of_a_resumed_run(resumed_run, capsys):
    """The figure and the Markdown of the resumed run, with numbers computed here."""
    assert main([str(resumed_run)]) == 0
    image, markdown_path = resumed_run / "report.png", resumed_run / "report.md"
    assert capsys.readouterr().out.split() == [str(image), str(markdown_path)]
    check_png(image)
    markdown = markdown_path.read_text(encoding="utf-8")

    final_step, _, final_loss = EXPECTED_VALIDATION[-1]
    best_step, _, best_loss = min(EXPECTED_VALIDATION, key=lambda row: row[2])
    assert table_value(markdown, "final validation loss") == (
        f"{final_loss:.4f} (perplexity {math.exp(final_loss):.2f}) at step {final_step}")
    assert table_value(markdown, "best validation loss") == (
        f"{best_loss:.4f} (perplexity {math.exp(best_loss):.2f}) at step {best_step}")
    assert table_value(markdown, "final training loss") == f"{10.0 - 200 / 50 - 1:.4f} at step 200"
    assert table_value(markdown, "steps done") == "200 / 200"
    assert table_value(markdown, "tokens seen") == "200,000"
    assert table_value(markdown, "median tokens/s (steps 101-200)") == "200"  # run B's rows only
    assert table_value(markdown, "median MFU (steps 101-200)") == "10.0%"
    assert table_value(markdown, "skipped steps") == "1"
    assert table_value(markdown, "resumes") == "1 (at step 101)"
    assert table_value(markdown, "zero_stage") == "2"
    assert table_value(markdown, "command") == "`deepspeed pretrain_ds.py --from_resume 1`"
    assert "![training curves](report.png)" in markdown
    assert "## Samples at step 200" in markdown
    assert "Once B200 ```x```" in markdown and "The B200" in markdown
    assert "A150" not in markdown and "A100" not in markdown


def test_report_without_validation_samples_or_settings(tmp_path):
    """A short run in an older format: no validation rows, no tokens_seen, no samples or settings."""
    rows = [training_row(step, "A") for step in range(1, 11)]
    for row in rows:
        del row["tokens_seen"]
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    output = tmp_path / "report"
    assert main([str(tmp_path), "--output", str(output)]) == 0
    check_png(output / "report.png")
    markdown = (output / "report.md").read_text(encoding="utf-8")
    assert table_value(markdown, "validation loss") == "no validation rows"
    assert table_value(markdown, "tokens seen") == "not logged"
    assert table_value(markdown, "resumes") == "0"
    assert "No `run_settings.json`" in markdown
    assert "## Samples" not in markdown
    assert not (tmp_path / "report.png").exists()


@pytest.mark.parametrize("case", ["one_row", "nonfinite_moe"])
def test_report_draws_awkward_runs(tmp_path, case):
    """One row; or NaN and inf losses (left out of the curves), skipped steps and a MoE aux loss."""
    if case == "one_row":
        rows = [training_row(1, "A")]
        expected_final = f"{rows[0]['loss']:.4f} at step 1"
    else:
        losses = [float("nan"), 5.0, float("inf"), 4.0, float("nan")]
        rows = [training_row(step, "A", loss=loss, aux_loss=0.01 * step, grad_norm=float("nan"),
                             skipped_steps=step // 2) for step, loss in enumerate(losses, start=1)]
        rows.append(validation_row(3, "A", float("inf")))
        expected_final = "nan at step 5"
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    assert main([str(tmp_path)]) == 0
    check_png(tmp_path / "report.png")
    assert table_value((tmp_path / "report.md").read_text(encoding="utf-8"), "final training loss") == expected_final


def bad_run_folder(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Command-line arguments for one kind of bad input, and the text its error must contain."""
    metrics = tmp_path / "metrics.jsonl"
    good_line = json.dumps(training_row(1, "A"))
    if case == "missing_folder":
        return [str(tmp_path / "absent")], f"{tmp_path / 'absent'}: no such folder"
    if case == "no_metrics":
        return [str(tmp_path)], f"{metrics}: no such file"
    if case == "empty_metrics":
        metrics.write_text("\n", encoding="utf-8")
        return [str(tmp_path)], f"{metrics}: empty"
    if case == "broken_json":
        metrics.write_text(f"{good_line}\n{good_line}\n{good_line[:40]}\n", encoding="utf-8")
        return [str(tmp_path)], f"{metrics}:3: not valid JSON"
    if case == "no_step":
        metrics.write_text(f'{good_line}\n["step", 2]\n', encoding="utf-8")
        return [str(tmp_path)], f'{metrics}:2: not a JSON object with an integer "step"'
    if case == "only_validation":
        write_jsonl(metrics, [validation_row(1, "A", 2.0)])
        return [str(tmp_path)], f"{metrics}: no training rows"
    if case == "broken_samples":
        metrics.write_text(good_line + "\n", encoding="utf-8")
        (tmp_path / "samples.jsonl").write_text('{"step": 1, "prompt": "a", "text"\n', encoding="utf-8")
        return [str(tmp_path)], f"{tmp_path / 'samples.jsonl'}:1: not valid JSON"
    return [str(tmp_path), "--nope"], "unrecognized arguments: --nope"


@pytest.mark.parametrize("case", ["missing_folder", "no_metrics", "empty_metrics", "broken_json", "no_step",
                                  "only_validation", "broken_samples", "bad_flag"])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, case):
    """Each bad input: exit status 2, nothing on stdout, one line on stderr naming the file and line."""
    argv, expected = bad_run_folder(tmp_path, case)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "report.png").exists()


def test_command_line_does_not_load_deepspeed(resumed_run):
    """``python -m minimind.report`` prints both paths, and never imports DeepSpeed (``-X importtime``
    lists every module the process imports)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "minimind.report", str(resumed_run)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(resumed_run / "report.png"), str(resumed_run / "report.md")]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")]
    assert "minimind.flags" in imported and "matplotlib.figure" in imported  # the listing is complete
    assert not [name for name in imported if name.split(".")[0] == "deepspeed"]


def dpo_row(step: int, **fields) -> dict:
    """A DPO training row: the loss near ln 2 and the rewards of both answers."""
    margin = step / 100
    return training_row(step, "A", loss=math.log(2) - margin / 4, reward_chosen=margin / 2,
                        reward_rejected=-margin / 2, reward_margin=margin, reward_accuracy=0.5 + margin / 4) | fields


def write_settings(folder: Path, stage: str, started: str) -> None:
    """A later stage's ``run_settings.json``: its stage and start time."""
    (folder / "run_settings.json").write_text(json.dumps({"stage": stage, "started": started}), encoding="utf-8")


def test_a_save_folder_of_three_stages_reports_each_and_draws_them_side_by_side(tmp_path, capsys):
    """``out`` holds pretraining's run and, in ``full_sft/`` and ``dpo/``, the later stages': each gets its report in
    its own folder, DPO's with its preference accuracy, and ``stages.png`` shows the three."""
    write_jsonl(tmp_path / "metrics.jsonl", [training_row(step, "A") for step in range(1, 21)]
                + [validation_row(20, "A", 3.0)])
    (tmp_path / "full_sft").mkdir()
    write_jsonl(tmp_path / "full_sft" / "metrics.jsonl", [training_row(step, "B") for step in range(1, 11)]
                + [validation_row(10, "B", 2.5)])
    write_settings(tmp_path / "full_sft", "sft", "2026-12-06T10:00:00+0000")
    (tmp_path / "dpo").mkdir()
    write_jsonl(tmp_path / "dpo" / "metrics.jsonl", [dpo_row(step) for step in range(1, 11)]
                + [{"step": 10, "val_loss": 0.66, "eval_tokens": 500, "val_reward_chosen": 0.1,
                    "val_reward_rejected": -0.1, "val_reward_margin": 0.2, "val_reward_accuracy": 0.625}])
    write_settings(tmp_path / "dpo", "dpo", "2026-12-06T11:00:00+0000")
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    folders = [tmp_path, tmp_path / "full_sft", tmp_path / "dpo"]  # the order they started in
    assert printed == [str(path) for folder in folders for path in (folder / "report.png", folder / "report.md")] \
        + [str(tmp_path / "stages.png")]
    for folder in folders:
        check_png(folder / "report.png")
    dpo = (tmp_path / "dpo" / "report.md").read_text(encoding="utf-8")
    assert table_value(dpo, "final validation loss") == "0.6600 (preference accuracy 62.5%) at step 10"
    assert table_value((tmp_path / "full_sft" / "report.md").read_text(encoding="utf-8"),
                       "final validation loss").startswith("2.5000 (perplexity 12.18) at step 10")
    assert imread(tmp_path / "stages.png").shape[:2] == (385, 1320)  # 3.5 x 12 inches at 110 dpi


def test_a_folder_with_only_a_later_stage_reports_that_stage(tmp_path, capsys):
    (tmp_path / "full_sft").mkdir()
    write_jsonl(tmp_path / "full_sft" / "metrics.jsonl", [training_row(step, "A") for step in range(1, 6)])
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "full_sft" / "report.png"),
                                               str(tmp_path / "full_sft" / "report.md")]
    assert not (tmp_path / "stages.png").exists()
