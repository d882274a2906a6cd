"""Resuming from copies of the reference run's checkpoints, through the real launcher (CPU ranks), or
in the test's own process where the resume is one rank without a launcher: a broken tag is refused in
one line before anything loads, ``--from_resume 1`` falls back past a broken newest tag and reproduces
the uninterrupted run, a checkpoint from before manifests loads with a warning, a resume with another
``--max_steps`` follows the new schedule, and a resume on another number of ranks goes through a
universal copy made once."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from minimind.checkpoint.manifest import MANIFEST_NAME
from minimind.training.loop.lr_schedule import minimind_lr_factor
from tests.launcher import (
    FP32_CONFIG,
    ONE_RANK_WHOLE_BATCH,
    REFERENCE_STEPS,
    REFERENCE_TRAINING,
    TINY_MODEL,
    assert_losses_follow,
    assert_resumed_losses_equal_the_reference,
    launch,
    main_in_process,
    read_metrics,
    write_corpus,
)

PEAK_LR = float(REFERENCE_TRAINING[REFERENCE_TRAINING.index("--learning_rate") + 1])
SHARD_0 = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
SHARD_1 = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
MODEL_STATES = "mp_rank_00_model_states.pt"


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def copy_of_reference(reference_run: Path, save_dir: Path) -> Path:
    """A copy of the reference run's ``save_dir`` (its checkpoints and metrics), which the test may break."""
    shutil.copytree(reference_run, save_dir)
    return save_dir / "checkpoints"


def resume_args(save_dir: Path, corpus: Path, *flags: str) -> list[str]:
    return [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", str(save_dir), *flags]


BREAKAGES = {
    "missing shard": (lambda tag: (tag / SHARD_1).unlink(), f"{SHARD_1} is missing"),
    "truncated shard": (lambda tag: os.truncate(tag / SHARD_0, 1000), f"{SHARD_0} is truncated (1000 of "),
    "flipped bytes": (lambda tag: flip_a_byte(tag / SHARD_1), f"{SHARD_1} fails its xxh3_128 checksum"),
    "missing manifest": (lambda tag: (tag / MANIFEST_NAME).unlink(), "no manifest (its manifest is missing)"),
    "missing client state": (lambda tag: (tag / MODEL_STATES).unlink(), f"{MODEL_STATES} is missing"),
}


def test_a_two_rank_save_s_manifest_names_every_file_of_the_tag(reference_run):
    tag_dir = reference_run / "checkpoints" / "step_40"
    recorded = json.loads((tag_dir / MANIFEST_NAME).read_text())
    on_disk = {path.relative_to(tag_dir).as_posix(): path.stat().st_size for path in tag_dir.rglob("*")
               if path.is_file() and path.name != MANIFEST_NAME}
    assert {SHARD_0, SHARD_1, MODEL_STATES, "pretrain_64.pth"} <= set(on_disk)
    assert {name: entry["size"] for name, entry in recorded["files"].items()} == on_disk
    assert recorded["world_size"] == 2


def assert_refused_naming_the_newest_intact_tag(error: str, checkpoints: Path, problem: str) -> None:
    """``error``, a rank's line, refuses ``step_40`` for ``problem`` and names ``step_30`` instead."""
    assert error.startswith(f"pretrain_ds.py: error: {checkpoints / 'step_40'}: {problem}")
    assert error.endswith(f"the newest intact checkpoint there is {checkpoints / 'step_30'} "
                          f"(--resume_from {checkpoints / 'step_30'})")


def test_a_broken_checkpoint_is_refused_by_every_rank_in_one_line_before_anything_loads(
        reference_run, corpus, launch_env_vars, tmp_path):
    """Two launched ranks and a byte flipped in one's shard, which they find verifying the checksums
    together: each says the same line and the job ends. (Every breakage, one process: the next test.)"""
    damage, problem = BREAKAGES["flipped bytes"]
    checkpoints = copy_of_reference(reference_run, tmp_path / "run")
    damage(checkpoints / "step_40")
    started = time.time()
    result = launch(2, resume_args(tmp_path / "run", corpus, "--resume_from", str(checkpoints / "step_40")),
                    env=launch_env_vars, check=False)
    elapsed = time.time() - started
    errors = [line for line in result.stderr.splitlines() if line.startswith("pretrain_ds.py: error: ")]
    assert result.returncode != 0 and len(errors) == 2, result.stderr[-3000:]  # one line from each rank
    assert errors[0] == errors[1]
    assert_refused_naming_the_newest_intact_tag(errors[0], checkpoints, problem)
    assert "model:" not in result.stdout and "resumed from" not in result.stdout  # no engine, nothing loaded
    assert elapsed < 120


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_checkpoint_is_refused_in_one_line_before_anything_loads(
        breakage, reference_run, corpus, launch_env_vars, tmp_path):
    """Each breakage, resumed from by ``pretrain_ds.main`` in this process (one rank, no launcher)."""
    damage, problem = BREAKAGES[breakage]
    checkpoints = copy_of_reference(reference_run, tmp_path / "run")
    damage(checkpoints / "step_40")
    started = time.time()
    result = main_in_process(resume_args(tmp_path / "run", corpus, "--resume_from", str(checkpoints / "step_40")),
                             env=launch_env_vars, check=False)
    elapsed = time.time() - started
    errors = [line for line in result.stderr.splitlines() if line.startswith("pretrain_ds.py: error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert_refused_naming_the_newest_intact_tag(errors[0], checkpoints, problem)
    assert "model:" not in result.stdout and "resumed from" not in result.stdout  # no engine, nothing loaded
    assert elapsed < 120


def test_from_resume_skips_a_broken_newest_tag_and_reproduces_the_uninterrupted_run(
        reference_run, corpus, launch_env_vars, tmp_path):
    checkpoints = copy_of_reference(reference_run, tmp_path / "run")
    flip_a_byte(checkpoints / "step_40" / SHARD_0)
    result = launch(2, resume_args(tmp_path / "run", corpus, "--from_resume", "1"), env=launch_env_vars)
    assert (f"resuming from step_30, the newest intact checkpoint; skipped step_40 ({SHARD_0} fails its "
            "xxh3_128 checksum (same size, different bytes))") in result.stdout
    assert_resumed_losses_equal_the_reference(tmp_path / "run", reference_run, from_step=30)
    assert f"moved step_40 aside to {checkpoints / 'superseded'}: this run continues from step_30" in result.stdout
    assert (checkpoints / "superseded" / "step_40").is_dir()
    assert (checkpoints / "latest").read_text() == "step_40"  # saved again, intact this time
    assert launch(2, resume_args(tmp_path / "run", corpus, "--from_resume", "1"), env=launch_env_vars).returncode == 0


def test_a_checkpoint_from_before_manifests_loads_with_a_warning(reference_run, corpus, launch_env_vars, tmp_path):
    checkpoints = copy_of_reference(reference_run, tmp_path / "run")
    for tag in ("step_20", "step_30", "step_40"):
        (checkpoints / tag / MANIFEST_NAME).unlink()
        (checkpoints / tag / "pretrain_64.pth").unlink()  # the old layout kept the .pth beside the checkpoints
    shutil.rmtree(checkpoints / "step_40")
    (checkpoints / "latest").write_text("step_30")
    result = launch(2, resume_args(tmp_path / "run", corpus, "--from_resume", "1"), env=launch_env_vars)
    assert f"warning: {checkpoints / 'step_30'} was written before checkpoints had manifests" in result.stdout
    assert_resumed_losses_equal_the_reference(tmp_path / "run", reference_run, from_step=30)


def test_a_resume_with_another_max_steps_follows_the_new_schedule_from_its_first_step(
        reference_run, corpus, launch_env_vars, tmp_path):
    reference = read_metrics(reference_run)
    assert [m["lr"] for m in reference] == pytest.approx(
        [PEAK_LR * minimind_lr_factor(m["step"] - 1, REFERENCE_STEPS) for m in reference], rel=1e-6)
    checkpoints = copy_of_reference(reference_run, tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").unlink()
    result = launch(2, resume_args(tmp_path / "run", corpus, "--resume_from", str(checkpoints / "step_20"),
                                   "--max_steps", "30"), env=launch_env_vars)
    assert "the schedule's length changed from 40 to 30 steps" in result.stdout
    resumed = read_metrics(tmp_path / "run")
    assert [m["step"] for m in resumed] == list(range(21, 31))
    assert [m["lr"] for m in resumed] == pytest.approx(
        [PEAK_LR * minimind_lr_factor(m["step"] - 1, 30) for m in resumed], rel=1e-6)


def test_a_resume_on_another_number_of_ranks_converts_to_universal_once(
        reference_run, corpus, launch_env_vars, tmp_path):
    checkpoints = copy_of_reference(reference_run, tmp_path / "run")
    for tag in ("step_30", "step_40"):
        shutil.rmtree(checkpoints / tag)
    (checkpoints / "latest").write_text("step_20")
    (tmp_path / "run" / "metrics.jsonl").unlink()
    one_rank = [*ONE_RANK_WHOLE_BATCH, "--data_path", str(corpus), "--save_dir", str(tmp_path / "run")]
    refused = main_in_process([*one_rank, "--from_resume", "1", "--auto_universal", "0"], env=launch_env_vars,
                              check=False)
    assert refused.returncode == 2 and (
        f"pretrain_ds.py: error: {checkpoints / 'step_20'} was written by 2 ranks; this run has 1: resume it without "
        f"--auto_universal 0, or convert it yourself (python -m minimind.checkpoint to-universal "
        f"{checkpoints / 'step_20'} {checkpoints / 'universal'}) and resume with --resume_from "
        f"{checkpoints / 'universal' / 'step_20'}") in refused.stderr
    result = main_in_process([*one_rank, "--from_resume", "1"], env=launch_env_vars)
    universal = checkpoints / "universal" / "step_20"
    assert (f"{checkpoints / 'step_20'} was written by 2 ranks; this run has 1: resuming from its universal copy "
            f"{universal} (converted now)") in result.stdout
    assert (universal / MANIFEST_NAME).is_file() and "(universal) at step 20" in result.stdout
    assert_losses_follow(read_metrics(tmp_path / "run"), read_metrics(reference_run)[20:], exact_steps=3, rel=1e-5)
    again = main_in_process([*one_rank, "--resume_from", str(checkpoints / "step_20"), "--max_steps", "21"],
                            env=launch_env_vars)
    assert f"resuming from its universal copy {universal} (converted before)" in again.stdout


def test_a_resume_on_one_rank_crosses_an_epoch_boundary_as_the_uninterrupted_run(launch_env_vars, tmp_path):
    """With a mixture of two sources (weights 0.75 and 0.25): one rank trains on the samples two ranks trained on,
    in every step, from a checkpoint in the first epoch into the second."""
    web = write_corpus(tmp_path / "web.jsonl", lines=45, seed=2)  # a few steps an epoch
    code = write_corpus(tmp_path / "code.jsonl", lines=10, seed=3)
    two_ranks = [*TINY_MODEL, "--deepspeed_config", str(FP32_CONFIG), "--batch_size", "2", "--accumulation_steps",
                 "2", "--learning_rate", "3e-3", "--epochs", "2", "--save_interval", "3", "--keep_checkpoints", "10",
                 "--data_path", f"{web}:0.75", f"{code}:0.25"]
    uninterrupted = launch(2, [*two_ranks, "--save_dir", str(tmp_path / "two")], env=launch_env_vars)
    per_epoch = int(re.search(r"(\d+) optimizer steps per epoch", uninterrupted.stdout).group(1))
    reference = read_metrics(tmp_path / "two")
    assert 3 < per_epoch and len(reference) == 2 * per_epoch
    assert f"mixture source {code}: weight 0.25 (25.0%)" in uninterrupted.stdout
    settings = json.loads((tmp_path / "two" / "run_settings.json").read_text())
    assert [source["token_share"] for source in settings["mixture"]] == pytest.approx([0.75, 0.25], abs=0.01)
    assert re.search(rf"mixture, epoch 1: {re.escape(str(code))} repeated, passes \d+-\d+", uninterrupted.stdout)
    checkpoints = tmp_path / "one" / "checkpoints"
    shutil.copytree(tmp_path / "two" / "checkpoints", checkpoints)
    for tag in checkpoints.glob("step_*"):
        if tag.name != "step_3":
            shutil.rmtree(tag)
    (checkpoints / "latest").write_text("step_3")
    main_in_process([*two_ranks, "--batch_size", "4", "--save_dir", str(tmp_path / "one"), "--from_resume", "1"],
                    env=launch_env_vars)
    resumed = read_metrics(tmp_path / "one")
    assert {m["epoch"] for m in resumed} == {0, 1}
    assert_losses_follow(resumed, reference[3:], exact_steps=3, rel=1e-5)
