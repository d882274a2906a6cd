"""End-to-end training through DeepSpeed's launcher on CPU ranks (gloo).

One module-scoped set of runs serves several tests, since each launch costs seconds:
- ``two_ranks``: 2 ranks, ZeRO-2 fp32, micro-batch 2, accumulation 2, 6 steps, checkpoints at 3 and 6;
- ``one_rank``: 1 rank, micro-batch 4, accumulation 2, otherwise the same;
- ``resumed``: 2 ranks resumed from ``two_ranks``' step-3 checkpoint.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.model.pth_weights import load_minimind_pth
from tests.launcher import REPO_ROOT, launch, launch_env, read_metrics, write_corpus

pytestmark = pytest.mark.slow

TINY_MODEL = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "32", "--log_interval", "1"]
FP32 = ["--deepspeed_config", str(REPO_ROOT / "ds_configs" / "zero2_fp32.json")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def env(workdir) -> dict:
    return {"MINIMIND_CACHE_DIR": str(workdir / "cache")}


@pytest.fixture(scope="module")
def corpus(workdir) -> Path:
    return write_corpus(workdir / "corpus.jsonl")


@pytest.fixture(scope="module")
def two_ranks(workdir, corpus, env) -> Path:
    save_dir = workdir / "two_ranks"
    launch(2, [*TINY_MODEL, *FP32, "--data_path", str(corpus), "--save_dir", str(save_dir), "--batch_size", "2",
               "--accumulation_steps", "2", "--max_steps", "6", "--save_interval", "3"], env=env)
    return save_dir


@pytest.fixture(scope="module")
def one_rank(workdir, corpus, env) -> Path:
    save_dir = workdir / "one_rank"
    launch(1, [*TINY_MODEL, *FP32, "--data_path", str(corpus), "--save_dir", str(save_dir), "--batch_size", "4",
               "--accumulation_steps", "2", "--max_steps", "6", "--save_interval", "100"], env=env)
    return save_dir


def test_two_ranks_reproduce_one_rank_with_the_whole_batch(two_ranks, one_rank):
    sharded, single = read_metrics(two_ranks), read_metrics(one_rank)
    assert [m["step"] for m in sharded] == [m["step"] for m in single] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(sharded, single, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
    assert sharded[0]["loss"] == pytest.approx(math.log(6400), rel=0.05)  # near-uniform start


def test_metrics_file_has_the_documented_fields(two_ranks):
    record = read_metrics(two_ranks)[0]
    assert {"step", "epoch", "loss", "aux_loss", "lr", "grad_norm", "tokens_per_s"} <= set(record)
    assert record["grad_norm"] > 0 and record["tokens_per_s"] > 0


def test_resumed_run_continues_the_uninterrupted_losses(workdir, corpus, env, two_ranks):
    save_dir = workdir / "resumed"
    result = launch(2, [*TINY_MODEL, *FP32, "--data_path", str(corpus), "--save_dir", str(save_dir), "--batch_size",
                        "2", "--accumulation_steps", "2", "--max_steps", "6", "--save_interval", "100",
                        "--resume_from", str(two_ranks / "checkpoints" / "step_3")], env=env)
    assert "at step 3" in result.stdout
    resumed, uninterrupted = read_metrics(save_dir), read_metrics(two_ranks)[3:]
    assert [m["step"] for m in resumed] == [4, 5, 6]
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=0), a["step"]
        assert a["lr"] == b["lr"]


def test_checkpoints_and_minimind_weights_are_written(two_ranks):
    checkpoints = two_ranks / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_6"
    assert {p.name for p in checkpoints.glob("step_*")} == {"step_3", "step_6"}
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=2)
    model = load_minimind_pth(MiniMindForCausalLM(config), two_ranks / "pretrain_64.pth")
    logits = model(torch.randint(0, 6400, (1, 8))).logits
    assert torch.isfinite(logits).all()


def test_loss_falls_on_a_learnable_corpus(workdir, corpus, env):
    save_dir = workdir / "falls"
    launch(1, [*TINY_MODEL, "--data_path", str(corpus), "--save_dir", str(save_dir), "--batch_size", "8",
               "--accumulation_steps", "1", "--max_steps", "40", "--learning_rate", "3e-3"], env=env)
    losses = [m["loss"] for m in read_metrics(save_dir)]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses
    # bf16 training: the .pth holds the fp32 master weights (rounded to fp16), as DeepSpeed's own
    # zero_to_fp32 reconstruction of the checkpoint gives them, not the bf16 module copy
    master = get_fp32_state_dict_from_zero_checkpoint(str(save_dir / "checkpoints"))
    weights = torch.load(save_dir / "pretrain_64.pth", weights_only=True)
    assert set(weights) == set(master) | {"lm_head.weight"}
    for key, tensor in master.items():
        assert torch.equal(weights[key], tensor.half()), key


def test_fp16_loss_scaler_skips_an_infinite_loss_on_both_ranks(workdir, corpus, env):
    config = json.loads((REPO_ROOT / "ds_configs" / "zero2_fp16.json").read_text())
    config["fp16"].update(initial_scale_power=8, loss_scale_window=2, hysteresis=1)
    config_path = workdir / "fp16_test.json"
    config_path.write_text(json.dumps(config))
    save_dir = workdir / "fp16"
    launch(2, [*TINY_MODEL, "--deepspeed_config", str(config_path), "--data_path", str(corpus), "--save_dir",
               str(save_dir), "--batch_size", "2", "--accumulation_steps", "1", "--max_steps", "6",
               "--save_interval", "1", "--keep_checkpoints", "10"],
           script="tests/fault_injection_entry.py", env={**env, "ALLOW_FP16_ON_CPU": "1", "INJECT_NONFINITE_AT": "3"})
    metrics = read_metrics(save_dir)
    scales = [m["loss_scale"] for m in metrics]
    skipped = [m["skipped_steps"] for m in metrics]
    assert scales[:2] == [256, 256] and scales[2] == 128, scales  # halved by the overflow at step 3
    # held for loss_scale_window (2) clean steps, then doubled back
    assert scales[3:] == [128, 128, 256], scales
    assert skipped == [0, 0, 1, 1, 1, 1]
    assert not math.isfinite(metrics[2]["loss"]) and all(math.isfinite(m["loss"]) for m in metrics[3:])

    def module_weights(tag: str) -> dict:
        state = torch.load(save_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=False)
        return state["module"]

    before, after_skip, after_next = module_weights("step_2"), module_weights("step_3"), module_weights("step_4")
    assert all(torch.equal(before[k], after_skip[k]) for k in before)
    assert any(not torch.equal(after_skip[k], after_next[k]) for k in before)


def test_universal_checkpoint_resumes_at_another_world_size(workdir, corpus, env, two_ranks):
    universal = workdir / "universal"
    subprocess.run([sys.executable, "-m", "minimind.checkpoint", "to-universal",
                    str(two_ranks / "checkpoints" / "step_3"), str(universal)],
                   cwd=REPO_ROOT, env=launch_env(env), check=True, capture_output=True, text=True, timeout=300)
    save_dir = workdir / "universal_one_rank"
    result = launch(1, [*TINY_MODEL, *FP32, "--data_path", str(corpus), "--save_dir", str(save_dir), "--batch_size",
                        "4", "--accumulation_steps", "2", "--max_steps", "6", "--save_interval", "100",
                        "--resume_from", str(universal)], env=env)
    assert "(universal) at step 3" in result.stdout
    resumed, uninterrupted = read_metrics(save_dir), read_metrics(two_ranks)[3:]
    assert [m["step"] for m in resumed] == [4, 5, 6]
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
