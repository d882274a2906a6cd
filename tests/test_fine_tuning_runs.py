"""The fine-tuning stages end to end: ``sft_ds.py`` and ``dpo_ds.py`` on CPU ranks, from weights made by upstream
MiniMind's own code (``tests/upstream/stages``), against upstream's first losses, an uninterrupted run, and ZeRO-2.

SFT starts from the fixture's ``policy`` weights as ``pretrain_16.pth``; DPO from its ``reference`` weights as
``full_sft_16.pth`` (policy and frozen reference alike, as MiniMind's trainer starts them).
"""

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dpo_ds
import sft_ds
from tests.launcher import (
    DS_CONFIGS,
    FP32_CONFIG,
    assert_losses_follow,
    config_with_updates,
    launch,
    main_in_process,
    read_eval_rows,
    read_metrics,
    read_samples,
)
from tests.test_stage_losses_upstream import RECORD, write_fixture_pth, write_jsonl

FIXTURE_MODEL = [*RECORD["model_flags"], "--deepspeed_config", str(FP32_CONFIG), "--log_interval", "1"]
SFT_SEQ = RECORD["sft"]["max_length"] - 1  # MiniMind's max_length is the project's max_seq_len + 1
DPO_SEQ = RECORD["dpo"]["max_length"] - 1
WORDS = "the cat sat on a mat while seven small birds sang in an old oak tree at dawn".split()
STEPS, SAVE_AT = 6, 3


def sentence(rng: random.Random, low: int, high: int) -> str:
    """A few seeded words."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def write_conversations(path: Path, count: int, seed: int = 0) -> Path:
    """``count`` seeded conversations of one to three exchanges, some with a system turn."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        turns = [{"role": "system", "content": sentence(rng, 2, 5)}] if index % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            turns += [{"role": "user", "content": sentence(rng, 2, 6)},
                      {"role": "assistant", "content": sentence(rng, 2, 8)}]
        records.append({"conversations": turns})
    return write_jsonl(path, records)


def write_pairs(path: Path, count: int, seed: int = 0) -> Path:
    """``count`` seeded preference pairs: one question, a longer chosen answer and a short rejected one."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        prompt = [{"role": "user", "content": sentence(rng, 2, 5)}]
        records.append({"chosen": [*prompt, {"role": "assistant", "content": sentence(rng, 4, 8)}],
                        "rejected": [*prompt, {"role": "assistant", "content": sentence(rng, 1, 2)}]})
    return write_jsonl(path, records)


def stage_dir(tmp_path: Path, weights: str, name: str) -> Path:
    """A save folder holding the fixture's ``weights`` as ``{name}_16.pth``, as the previous stage leaves it."""
    save_dir = tmp_path / "out"
    save_dir.mkdir(parents=True)
    write_fixture_pth(weights, save_dir / f"{name}_16.pth")
    return save_dir


def test_sft_first_step_logs_minimind_s_loss_on_its_rows(tmp_path, launch_env_vars):
    """``--packing 0``: one step over every fixture conversation as one batch logs e119db8's SFT loss."""
    save_dir = stage_dir(tmp_path, RECORD["sft"]["weights"], "pretrain")
    data = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": c} for c in RECORD["sft"]["conversations"]])
    count = str(len(RECORD["sft"]["conversations"]))
    result = main_in_process([*FIXTURE_MODEL, "--data_path", str(data), "--max_seq_len", str(SFT_SEQ), "--packing",
                              "0", "--batch_size", count, "--max_steps", "1", "--save_dir", str(save_dir)],
                             env=launch_env_vars, entry=sft_ds.main)
    assert "2 cut to 64 tokens as MiniMind cuts them" in result.stdout
    first = read_metrics(save_dir / "full_sft")[0]
    assert first["loss"] == pytest.approx(RECORD["sft"]["loss"], rel=1e-5)
    assert (save_dir / "full_sft_16.pth").is_file() and (save_dir / "full_sft" / "checkpoints").is_dir()


SFT_RUN = [*FIXTURE_MODEL, "--max_seq_len", str(SFT_SEQ), "--batch_size", "2", "--accumulation_steps", "2",
           "--learning_rate", "3e-3", "--max_steps", str(STEPS), "--save_interval", str(SAVE_AT), "--eval_fraction",
           "0.1", "--sample_prompts", "default", "--sample_tokens", "4"]


@pytest.fixture(scope="module")
def sft_two_ranks(launch_dir, launch_env_vars) -> Path:
    """A 2-rank ZeRO-2 SFT run on packed conversations, with validation and chat samples."""
    folder = launch_dir / "sft"
    folder.mkdir()
    data = write_conversations(folder / "sft.jsonl", 120)
    save_dir = stage_dir(folder, RECORD["sft"]["weights"], "pretrain")
    launch(2, [*SFT_RUN, "--data_path", str(data), "--save_dir", str(save_dir)], script="sft_ds.py",
           env=launch_env_vars)
    return save_dir


def test_sft_trains_on_packed_conversations_with_validation_and_chat_samples(sft_two_ranks):
    records = read_metrics(sft_two_ranks / "full_sft")
    assert [m["step"] for m in records] == list(range(1, STEPS + 1))
    assert records[-1]["loss"] < records[0]["loss"]
    evals = read_eval_rows(sft_two_ranks / "full_sft")
    assert [row["step"] for row in evals] == [0, SAVE_AT, STEPS]  # the starting weights too
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    samples = read_samples(sft_two_ranks / "full_sft")
    assert {row["prompt"] for row in samples} == {"What does `json.dumps` do?", "What does `torch.nn.Linear` do?",
                                                  "Who are you?"}
    settings = json.loads((sft_two_ranks / "full_sft" / "run_settings.json").read_text())
    assert settings["from_weight"].endswith("pretrain_16.pth") and settings["weights"].endswith("full_sft_16.pth")


def copy_at_save(run: Path, save_dir: Path, stage: str) -> Path:
    """A copy of a run's save folder as it was at its step-``SAVE_AT`` save: the stage's later checkpoints and its
    metrics gone. Returns ``save_dir``."""
    shutil.copytree(run, save_dir)
    checkpoints = save_dir / stage / "checkpoints"
    for tag in checkpoints.glob("step_*"):
        if tag.name != f"step_{SAVE_AT}":
            shutil.rmtree(tag)
    (checkpoints / "latest").write_text(f"step_{SAVE_AT}")
    (save_dir / stage / "metrics.jsonl").unlink()
    return save_dir


def test_a_two_rank_sft_run_resumed_on_one_rank_continues_its_losses(sft_two_ranks, tmp_path, launch_env_vars):
    """The step-3 checkpoint of two ranks, resumed by one rank holding the whole batch (a universal checkpoint,
    converted on the way), trains steps 4-6 as the two ranks did."""
    save_dir = copy_at_save(sft_two_ranks, tmp_path / "out", "full_sft")
    result = main_in_process([*SFT_RUN, "--batch_size", "4", "--data_path", str(sft_two_ranks.parent / "sft.jsonl"),
                              "--save_dir", str(save_dir), "--from_resume", "1"], env=launch_env_vars,
                             entry=sft_ds.main)
    assert "resuming from its universal copy" in result.stdout
    assert "--from_weight pretrain: not used, the run resumes from its checkpoint" in result.stdout
    resumed = read_metrics(save_dir / "full_sft")
    assert_losses_follow(resumed, read_metrics(sft_two_ranks / "full_sft")[SAVE_AT:], exact_steps=STEPS, rel=1e-5)


DPO_RUN = [*FIXTURE_MODEL, "--max_seq_len", str(DPO_SEQ), "--batch_size", "2", "--accumulation_steps", "2",
           "--learning_rate", "3e-3", "--max_steps", str(STEPS), "--save_interval", str(SAVE_AT), "--eval_fraction",
           "0.2", "--sample_prompts", "none"]


def dpo_run(folder: Path, config: Path, launch_env_vars: dict) -> Path:
    """A 2-rank DPO run under ``config`` on seeded pairs, from the fixture's reference weights."""
    folder.mkdir(exist_ok=True)
    data = write_pairs(folder / "dpo.jsonl", 60)
    save_dir = stage_dir(folder, RECORD["dpo"]["weights"]["reference"], "full_sft")
    result = launch(2, [*DPO_RUN, "--deepspeed_config", str(config), "--data_path", str(data), "--save_dir",
                        str(save_dir)], script="dpo_ds.py", env=launch_env_vars)
    (folder / "dpo.log").write_text(result.stdout)
    return save_dir


@pytest.fixture(scope="module")
def dpo_zero2(launch_dir, launch_env_vars) -> Path:
    """A 2-rank ZeRO-2 fp32 DPO run."""
    return dpo_run(launch_dir / "dpo_zero2", FP32_CONFIG, launch_env_vars)


def test_dpo_starts_at_log_2_and_learns_the_preference(dpo_zero2):
    """Policy and reference start equal (MiniMind's first DPO loss is ln 2 and every reward 0); the chosen answers'
    rewards then pull ahead of the rejected ones, on the training pairs and the held-out ones."""
    records = read_metrics(dpo_zero2 / "dpo")
    assert [m["step"] for m in records] == list(range(1, STEPS + 1))
    assert records[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert records[0]["reward_chosen"] == records[0]["reward_rejected"] == 0
    assert records[-1]["loss"] < math.log(2) and records[-1]["reward_margin"] > 0
    evals = read_eval_rows(dpo_zero2 / "dpo")
    assert [row["step"] for row in evals] == [0, SAVE_AT, STEPS]
    assert evals[0]["val_loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert evals[0]["val_reward_accuracy"] == 0.5  # every reward 0 at the start: ties, counted half
    assert evals[-1]["val_reward_accuracy"] > 0.5 and evals[-1]["val_loss"] < math.log(2)
    assert "val_ppl" not in evals[-1]


def test_zero3_dpo_matches_zero2_with_the_reference_partitioned(dpo_zero2, tmp_path, launch_env_vars):
    zero3 = config_with_updates("zero3_bf16.json", tmp_path / "zero3_fp32.json", {"bf16": {"enabled": False}})
    save_dir = dpo_run(tmp_path, zero3, launch_env_vars)
    assert "frozen, partitioned over the ranks (ZeRO-3)" in (tmp_path / "dpo.log").read_text()
    assert json.loads((save_dir / "dpo" / "run_settings.json").read_text())["zero_stage"] == 3
    assert_losses_follow(read_metrics(save_dir / "dpo"), read_metrics(dpo_zero2 / "dpo"), exact_steps=STEPS,
                         rel=1e-5)


def test_a_dpo_resume_reloads_its_reference_and_continues_the_losses(dpo_zero2, tmp_path, launch_env_vars):
    """From the step-3 checkpoint the policy has moved away from the reference: the resumed steps' losses (one rank,
    the whole batch) are the uninterrupted run's only if the reference is the recorded ``.pth`` again. Other
    weights under that name are refused in one line."""
    save_dir = copy_at_save(dpo_zero2, tmp_path / "out", "dpo")
    args = [*DPO_RUN, "--batch_size", "4", "--data_path", str(dpo_zero2.parent / "dpo.jsonl"), "--save_dir",
            str(save_dir), "--from_resume", "1"]
    reference = save_dir / "full_sft_16.pth"
    original = reference.read_bytes()
    write_fixture_pth(RECORD["dpo"]["weights"]["policy"], reference)
    refused = main_in_process(args, env=launch_env_vars, entry=dpo_ds.main, check=False)
    assert refused.returncode == 2
    assert f"{reference} now holds other weights" in refused.stderr
    reference.write_bytes(original)
    main_in_process(args, env=launch_env_vars, entry=dpo_ds.main)
    assert_losses_follow(read_metrics(save_dir / "dpo"), read_metrics(dpo_zero2 / "dpo")[SAVE_AT:],
                         exact_steps=STEPS, rel=1e-5)


def test_dpo_without_a_from_weight_is_refused_in_one_line(tmp_path):
    result = main_in_process([*DPO_RUN, "--data_path", str(write_pairs(tmp_path / "dpo.jsonl", 8)), "--save_dir",
                              str(tmp_path / "out"), "--from_weight", "none"], entry=dpo_ds.main, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("dpo_ds.py: error: --from_weight none: DPO needs")


@pytest.mark.parametrize("record, problem", [
    ({"conversations": [{"role": "user", "content": "hi"}]}, "has no assistant turn"),
    ({"conversations": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     "has role 'robot'"),
])
def test_a_bad_conversation_is_refused_naming_its_file_and_line(tmp_path, record, problem):
    save_dir = stage_dir(tmp_path, RECORD["sft"]["weights"], "pretrain")
    data = write_conversations(tmp_path / "sft.jsonl", 4)
    with data.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    result = main_in_process([*SFT_RUN, "--data_path", str(data), "--save_dir", str(save_dir)], entry=sft_ds.main,
                             check=False)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"sft_ds.py: error: {data}:5:") and problem in line


def test_a_pair_whose_prompts_differ_is_refused_naming_its_line(tmp_path):
    save_dir = stage_dir(tmp_path, RECORD["dpo"]["weights"]["reference"], "full_sft")
    data = write_pairs(tmp_path / "dpo.jsonl", 3)
    with data.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                 "rejected": [{"role": "user", "content": "c"},
                                              {"role": "assistant", "content": "d"}]}) + "\n")
    result = main_in_process([*DPO_RUN, "--data_path", str(data), "--save_dir", str(save_dir)], entry=dpo_ds.main,
                             check=False)
    assert result.returncode == 2
    assert f"{data}:4: chosen and rejected differ before their last assistant turn" in result.stderr


@pytest.mark.parametrize("flags, problem", [
    (["--num_hidden_layers", "2"], "--from_weight pretrain: "),  # weights of another shape
    (["--packed_attention", "flex"], "--packed_attention flex: FlexAttention trains on CUDA only (it has no backward "
                                     "on cpu); use mask, or auto"),
])
def test_sft_flags_that_cannot_work_are_refused_in_one_line(tmp_path, flags, problem):
    save_dir = stage_dir(tmp_path, RECORD["sft"]["weights"], "pretrain")
    result = main_in_process([*SFT_RUN, *flags, "--data_path", str(write_conversations(tmp_path / "sft.jsonl", 8)),
                              "--save_dir", str(save_dir)], entry=sft_ds.main, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"sft_ds.py: error: {problem}")


def test_the_minimind3_family_fine_tunes_and_aligns_in_its_own_chat_template(tmp_path, launch_env_vars):
    """Upstream-made minimind3 weights (``tests/upstream/start``) as ``pretrain_32.pth``: SFT on d65ef2c's rows (its
    chat template: think blocks, no default system turn), its samples asked in that template, then DPO from the
    SFT weights with today's summed sequence log-probabilities, starting at ln 2."""
    start = Path(__file__).parent / "upstream" / "start"
    record = json.loads((start / "minimind3.json").read_text(encoding="utf-8"))
    state = load_file(start / "minimind3.safetensors")
    copy, source = record["tied"]
    save_dir = tmp_path / "out"
    save_dir.mkdir()
    torch.save({**state, copy: state[source]}, save_dir / "pretrain_32.pth")
    family = ["--model_family", "minimind3", "--hidden_size", "32", "--num_hidden_layers", "1", "--deepspeed_config",
              str(FP32_CONFIG), "--log_interval", "1", "--max_seq_len", "48", "--max_steps", "3",
              "--learning_rate", "3e-3", "--eval_fraction", "0.2", "--sample_prompts", "default", "--sample_tokens",
              "3", "--save_dir", str(save_dir)]
    sft = main_in_process([*family, "--batch_size", "4", "--data_path", str(write_conversations(tmp_path / "sft.jsonl",
                                                                                                  40))],
                          env=launch_env_vars, entry=sft_ds.main)
    assert "weights: " in sft.stdout and (save_dir / "full_sft_32.pth").is_file()
    assert len(read_metrics(save_dir / "full_sft")) == 3
    assert [row["step"] for row in read_samples(save_dir / "full_sft")] == [0, 0, 0, 3, 3, 3]
    dpo = main_in_process([*family, "--batch_size", "2", "--learning_rate", "3e-4", "--data_path",
                           str(write_pairs(tmp_path / "dpo.jsonl", 20))], env=launch_env_vars, entry=dpo_ds.main)
    assert "reference model: " in dpo.stdout
    records = read_metrics(save_dir / "dpo")
    assert records[0]["loss"] == pytest.approx(math.log(2), rel=1e-6) and records[1]["reward_margin"] != 0
    settings = json.loads((save_dir / "dpo" / "run_settings.json").read_text())
    assert settings["stage"] == "dpo" and settings["model"]["model_family"] == "minimind3"


def test_a_bf16_dpo_step_runs_its_reference_in_bf16(tmp_path, launch_env_vars):
    """bf16 (the policy's BF16 optimizer, the reference a stage-0 bf16 copy): the first loss is ln 2 up to bf16's
    rounding of two equal models' log-probabilities, and the step after it moves."""
    save_dir = stage_dir(tmp_path, RECORD["dpo"]["weights"]["reference"], "full_sft")
    result = main_in_process([*DPO_RUN, "--deepspeed_config", str(DS_CONFIGS / "zero2_bf16.json"), "--batch_size", "4",
                              "--max_steps", "2", "--data_path", str(write_pairs(tmp_path / "dpo.jsonl", 20)),
                              "--save_dir", str(save_dir)], env=launch_env_vars, entry=dpo_ds.main)
    assert "precision bf16" in result.stdout and "frozen, one copy per rank" in result.stdout
    records = read_metrics(save_dir / "dpo")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the same bf16 model twice: equal rewards
    assert records[1]["loss"] != records[0]["loss"] and math.isfinite(records[1]["loss"])


@pytest.mark.parametrize("flags, problem", [
    (["--packing", "1"], "--packing 1: DPO's preference pairs are padded rows"),
    (["--skip_bad_lines"], "--skip_bad_lines applies to pretraining's text files"),
    (["--save_weight", "full_sft"], "--save_weight full_sft: DPO would overwrite its own reference weights"),
])
def test_flags_that_mean_nothing_or_harm_in_dpo_are_refused_in_one_line(tmp_path, flags, problem):
    save_dir = stage_dir(tmp_path, RECORD["dpo"]["weights"]["reference"], "full_sft")
    result = main_in_process([*DPO_RUN, "--data_path", str(write_pairs(tmp_path / "dpo.jsonl", 8)), "--save_dir",
                              str(save_dir), *flags], entry=dpo_ds.main, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"dpo_ds.py: error: {problem}")
