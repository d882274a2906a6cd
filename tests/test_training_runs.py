"""End-to-end training through DeepSpeed's launcher on CPU ranks (gloo).

Most tests read the session's ``reference_run`` (2 ranks, ZeRO-2 fp32, micro-batch 2,
accumulation 2, 40 steps, checkpoints every 10); the others launch the one variation they test.
"""

import math
import sys

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.checkpoint.__main__ import main as checkpoint_main
from minimind.model.pth_weights import load_minimind_pth
from tests.launcher import (
    FAULT_INJECTION_ENTRY,
    ONE_RANK_WHOLE_BATCH,
    REFERENCE_STEPS,
    REFERENCE_TRAINING,
    assert_losses_follow,
    assert_weights_file_holds_the_masters,
    config_with_updates,
    free_local_port,
    launch,
    module_weights,
    read_metrics,
    run_job,
    short_training,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_rank(launch_dir, corpus, launch_env_vars):
    """The whole batch in one process started as MiniMind's users start its trainer, with no
    launcher at all: ``python pretrain_ds.py ...``."""
    save_dir = launch_dir / "one_rank"
    port = free_local_port()  # where the single process's group meets (the run picks one itself otherwise)
    result = run_job([sys.executable, "pretrain_ds.py", *ONE_RANK_WHOLE_BATCH, "--data_path", str(corpus),
                      "--save_dir", str(save_dir)], port, env={**launch_env_vars, "MASTER_PORT": str(port)})
    assert "launcher: none, a single process (rank 0 of 1)" in result.stdout
    return save_dir


def test_two_ranks_reproduce_one_rank_with_the_whole_batch(reference_run, one_rank):
    sharded, single = read_metrics(reference_run), read_metrics(one_rank)
    assert [m["step"] for m in sharded] == list(range(1, REFERENCE_STEPS + 1))
    assert_losses_follow(sharded, single, exact_steps=6, rel=1e-5)
    assert sharded[0]["loss"] == pytest.approx(math.log(6400), rel=0.05)  # near-uniform start


def test_a_compiled_model_trains_as_the_eager_one(one_rank, launch_dir, corpus, launch_env_vars):
    save_dir = launch_dir / "compiled"
    result = launch(1, [*ONE_RANK_WHOLE_BATCH, "--compile", "1", "--data_path", str(corpus),
                        "--save_dir", str(save_dir)], env=launch_env_vars)
    assert "torch.compile: the model compiles at its first forward (inductor backend)" in result.stdout
    # inductor fuses the elementwise work, so sums may round in another order: agreement to 1e-5
    assert_losses_follow(read_metrics(save_dir), read_metrics(one_rank), exact_steps=6, rel=1e-5)


def test_zero3_trains_a_moe_model_as_zero2_does(launch_dir, corpus, launch_env_vars, tmp_path):
    """ZeRO-3 partitions every weight: the fused residual norm and the grouped experts (which stack
    the experts' weights without calling the experts) still see whole weights."""
    losses = {}
    for stage in (2, 3):
        config = config_with_updates("zero3_bf16.json", tmp_path / f"zero{stage}.json",
                                     {"bf16": {"enabled": False}, "zero_optimization": {"stage": stage}})
        save_dir = launch_dir / f"moe_zero{stage}"
        launch(2, [*short_training(config, 4), "--use_moe", "1", "--data_path", str(corpus), "--save_dir",
                   str(save_dir)], env=launch_env_vars)
        losses[stage] = read_metrics(save_dir)
    assert_losses_follow(losses[3], losses[2], exact_steps=4, rel=1e-5)
    assert all(m["aux_loss"] > 0 for m in losses[3])


def test_torchrun_trains_as_deepspeed_s_launcher_does(reference_run, launch_dir, corpus, launch_env_vars):
    save_dir = launch_dir / "torchrun"
    port = free_local_port()
    result = run_job([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                      "127.0.0.1", "--master_port", str(port), "pretrain_ds.py", *REFERENCE_TRAINING, "--data_path",
                      str(corpus), "--save_dir", str(save_dir)], port, env=launch_env_vars)
    assert "launcher: deepspeed/torchrun, 2 processes" in result.stdout
    # same world, data split and seeds; torchrun's one thread per rank may change summation order
    assert_losses_follow(read_metrics(save_dir), read_metrics(reference_run), exact_steps=REFERENCE_STEPS, rel=1e-5)


def test_metrics_file_has_the_documented_fields(reference_run):
    record = read_metrics(reference_run)[0]
    assert {"step", "epoch", "loss", "aux_loss", "lr", "grad_norm", "tokens_per_s"} <= set(record)
    assert record["grad_norm"] > 0 and record["tokens_per_s"] > 0


def test_loss_falls_on_a_learnable_corpus(reference_run):
    losses = [m["loss"] for m in read_metrics(reference_run)]
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses


def test_checkpoints_are_pruned_and_minimind_weights_written(reference_run):
    checkpoints = reference_run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_40"
    assert {p.name for p in checkpoints.glob("step_*")} == {"step_20", "step_30", "step_40"}  # --keep_checkpoints 3
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=2)
    model = load_minimind_pth(MiniMindForCausalLM(config), reference_run / "pretrain_64.pth")
    logits = model(torch.randint(0, 6400, (1, 8))).logits
    assert torch.isfinite(logits).all()


def test_fp16_loss_scaler_skips_an_infinite_loss_on_both_ranks(launch_dir, corpus, launch_env_vars):
    config_path = config_with_updates("zero2_fp16.json", launch_dir / "fp16_test.json",
                                      {"fp16": {"initial_scale_power": 8, "loss_scale_window": 2, "hysteresis": 1}})
    save_dir = launch_dir / "fp16"
    launch(2, [*short_training(config_path, max_steps=6), "--data_path", str(corpus), "--save_dir", str(save_dir),
               "--save_interval", "1", "--keep_checkpoints", "10"],
           script=FAULT_INJECTION_ENTRY, env={**launch_env_vars, "ALLOW_FP16_ON_CPU": "1", "INJECT_NONFINITE_AT": "3"})
    metrics = read_metrics(save_dir)
    scales = [m["loss_scale"] for m in metrics]
    skipped = [m["skipped_steps"] for m in metrics]
    assert scales[:2] == [256, 256] and scales[2] == 128, scales  # halved by the overflow at step 3
    # held for loss_scale_window (2) clean steps, then doubled back
    assert scales[3:] == [128, 128, 256], scales
    assert skipped == [0, 0, 1, 1, 1, 1]
    assert not math.isfinite(metrics[2]["loss"]) and all(math.isfinite(m["loss"]) for m in metrics[3:])

    before, after_skip, after_next = (module_weights(save_dir, f"step_{step}") for step in (2, 3, 4))
    assert all(torch.equal(before[k], after_skip[k]) for k in before)
    assert any(not torch.equal(after_skip[k], after_next[k]) for k in before)
    # The .pth holds the fp32 master weights rounded to fp16, as DeepSpeed's own zero_to_fp32
    # reconstruction of the checkpoint gives them.
    master, weights = assert_weights_file_holds_the_masters(save_dir)
    assert set(weights) == set(master) | {"lm_head.weight"}


def test_universal_checkpoint_resumes_at_another_world_size(launch_dir, corpus, launch_env_vars, reference_run):
    universal = launch_dir / "universal"
    assert checkpoint_main(["to-universal", str(reference_run / "checkpoints" / "step_20"), str(universal)]) == 0
    save_dir = launch_dir / "universal_one_rank"
    result = launch(1, [*ONE_RANK_WHOLE_BATCH, "--data_path", str(corpus), "--save_dir", str(save_dir),
                        "--resume_from", str(universal)], env=launch_env_vars)
    assert "(universal) at step 20" in result.stdout
    assert_losses_follow(read_metrics(save_dir), read_metrics(reference_run)[20:], exact_steps=3, rel=1e-5)
