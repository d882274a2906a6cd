"""End-to-end training through DeepSpeed's launcher on CPU ranks (gloo), or in the test's own process
where the run is one rank without a launcher.

Most tests read the session's ``reference_run`` (2 ranks, ZeRO-2 fp32, micro-batch 2,
accumulation 2, 40 steps, checkpoints every 10); the others run the one variation they test.
"""

import json
import math
import sys

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

import pretrain_ds
from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.checkpoint.__main__ import main as checkpoint_main
from minimind.data.default_corpus import SAMPLE_PROMPTS
from minimind.model.pth_weights import load_minimind_pth
from minimind.tokenizer.loader import load_tokenizer
from tests.launcher import (
    FAULT_INJECTION_ENTRY,
    FP32_CONFIG,
    ONE_RANK_WHOLE_BATCH,
    REFERENCE_STEPS,
    REFERENCE_TRAINING,
    SAMPLE_TOKENS,
    TINY_MODEL,
    assert_losses_follow,
    assert_weights_file_holds_the_masters,
    config_with_updates,
    evaluation_flags,
    free_local_port,
    launch,
    main_in_process,
    module_weights,
    one_rank_in_this_process,
    read_eval_rows,
    read_metrics,
    read_samples,
    run_job,
    short_training,
    write_corpus,
)
from tests.model_reference import greedy_full_recompute


@pytest.fixture(scope="module")
def one_rank(launch_dir, corpus, eval_corpus, launch_env_vars):
    """The whole batch in one process with no launcher at all, as MiniMind's users start its trainer
    (``pretrain_ds.main`` in this process; ``python pretrain_ds.py`` is ``tests/test_wandb_run.py``'s);
    it evaluates as the reference run does."""
    save_dir = launch_dir / "one_rank"
    result = main_in_process([*ONE_RANK_WHOLE_BATCH, "--data_path", str(corpus), *evaluation_flags(eval_corpus),
                              "--save_dir", str(save_dir)], env=launch_env_vars)
    assert "launcher: none, a single process (rank 0 of 1)" in result.stdout
    return save_dir


def test_two_ranks_reproduce_one_rank_with_the_whole_batch(reference_run, one_rank):
    sharded, single = read_metrics(reference_run), read_metrics(one_rank)
    assert [m["step"] for m in sharded] == list(range(1, REFERENCE_STEPS + 1))
    assert_losses_follow(sharded, single, exact_steps=6, rel=1e-5)
    assert sharded[0]["loss"] == pytest.approx(math.log(6400), rel=0.05)  # near-uniform start


def test_validation_is_the_plain_pytorch_loss_on_one_and_two_ranks(reference_run, one_rank, eval_corpus):
    sharded, single = read_eval_rows(reference_run), read_eval_rows(one_rank)
    assert [row["step"] for row in sharded] == [row["step"] for row in single] == [10, 20, 30, 40]
    assert [row["eval_tokens"] for row in sharded] == [row["eval_tokens"] for row in single]
    for two, one in zip(sharded, single, strict=True):
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
        assert two["val_ppl"] == pytest.approx(math.exp(two["val_loss"]), rel=1e-9)
    model = final_model(reference_run)
    tokenizer = load_tokenizer()
    stream = []
    for line in eval_corpus.read_text().splitlines():
        text = json.loads(line)["text"]
        stream += [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
    loss_sum, targets = 0.0, 0
    with torch.no_grad():  # windows of max_seq_len + 1 tokens; the last one shorter (no padding needed)
        for start in range(0, len(stream), 33):
            window = torch.tensor(stream[start:start + 33])
            logits = model(input_ids=window[None, :-1]).logits[0].double()
            loss_sum += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
            targets += len(window) - 1
    assert sharded[-1]["eval_tokens"] == targets
    assert sharded[-1]["val_loss"] == pytest.approx(loss_sum / targets, rel=1e-5)


def test_samples_are_the_greedy_continuation_of_a_full_recompute_decode(reference_run):
    rows = read_samples(reference_run)
    assert [row["step"] for row in rows] == [step for step in (10, 20, 30, 40) for _ in SAMPLE_PROMPTS]
    model, tokenizer = final_model(reference_run), load_tokenizer()
    for row, prompt in zip(rows[-len(SAMPLE_PROMPTS):], SAMPLE_PROMPTS, strict=True):
        ids = [tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]
        new = greedy_full_recompute(model, ids, SAMPLE_TOKENS)
        if tokenizer.eos_token_id in new:
            new = new[:new.index(tokenizer.eos_token_id)]
        assert row["prompt"] == prompt and row["text"] == tokenizer.decode(new, skip_special_tokens=True)


def final_model(save_dir) -> MiniMindForCausalLM:
    """The fp32 model holding the run's last checkpoint's master weights (DeepSpeed's ``zero_to_fp32``)."""
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, kernel_impl="torch"))
    model.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(save_dir / "checkpoints")), strict=False)
    return model.eval()


def test_a_compiled_model_trains_as_the_eager_one(one_rank, launch_dir, corpus, launch_env_vars):
    save_dir = launch_dir / "compiled"
    result = launch(1, [*ONE_RANK_WHOLE_BATCH, "--compile", "1", "--data_path", str(corpus),
                        "--save_dir", str(save_dir)], env=launch_env_vars)
    assert "torch.compile: the model compiles at its first forward (inductor backend)" in result.stdout
    # inductor fuses the elementwise work, so sums may round in another order: agreement to 1e-5
    assert_losses_follow(read_metrics(save_dir), read_metrics(one_rank), exact_steps=6, rel=1e-5)


def test_zero3_trains_a_moe_model_as_zero2_does(launch_dir, corpus, launch_env_vars, tmp_path):
    """ZeRO-3 partitions every weight: the fused residual norm and the grouped experts (which stack
    the experts' weights without calling the experts) still see whole weights, and so do the
    evaluation and the KV-cached sample decode at the end of the run."""
    save_dirs = {}
    for stage in (2, 3):
        config = config_with_updates("zero3_bf16.json", tmp_path / f"zero{stage}.json",
                                     {"bf16": {"enabled": False}, "zero_optimization": {"stage": stage}})
        save_dirs[stage] = launch_dir / f"moe_zero{stage}"
        launch(2, [*short_training(config, 4), "--use_moe", "1", "--data_path", str(corpus), "--eval_fraction",
                   "0.05", "--sample_prompts", "default", "--sample_tokens", "4", "--save_dir", str(save_dirs[stage])],
               env=launch_env_vars)
    losses = {stage: read_metrics(save_dir) for stage, save_dir in save_dirs.items()}
    assert_losses_follow(losses[3], losses[2], exact_steps=4, rel=1e-5)
    assert all(m["aux_loss"] > 0 for m in losses[3])
    (zero3,), (zero2,) = read_eval_rows(save_dirs[3]), read_eval_rows(save_dirs[2])
    assert zero3["step"] == 4 and zero3["val_loss"] == pytest.approx(zero2["val_loss"], rel=1e-5)
    samples = {stage: read_samples(save_dir) for stage, save_dir in save_dirs.items()}
    assert samples[3] == samples[2] and len(samples[3]) == 3


def test_zero3_with_activation_checkpointing_trains_a_minimind3_moe_model_as_zero2_does(launch_dir, corpus,
                                                                                       launch_env_vars, tmp_path):
    """The minimind3 family under ZeRO-3 (its per-head q/k norms and router partitioned too) with every block
    recomputed in the backward, against ZeRO-2 without recomputation: one rank in this process, fp32."""
    save_dirs = {}
    for stage, extra in ((2, []), (3, ["--activation_checkpointing"])):
        config = config_with_updates("zero3_bf16.json", tmp_path / f"zero{stage}.json",
                                     {"bf16": {"enabled": False}, "zero_optimization": {"stage": stage}})
        save_dirs[stage] = launch_dir / f"minimind3_moe_zero{stage}"
        main_in_process([*short_training(config, 3), *extra, "--model_family", "minimind3", "--use_moe", "1",
                         "--data_path", str(corpus), "--save_dir", str(save_dirs[stage])], env=launch_env_vars)
    losses = {stage: read_metrics(save_dir) for stage, save_dir in save_dirs.items()}
    assert_losses_follow(losses[3], losses[2], exact_steps=3, rel=1e-5)
    assert all(m["aux_loss"] > 0 for m in losses[3])
    weights = torch.load(next((save_dirs[3]).glob("pretrain_*_moe.pth")), weights_only=True)
    assert "model.layers.0.self_attn.q_norm.weight" in weights and not any("shared_experts" in k for k in weights)


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
    result = main_in_process([*ONE_RANK_WHOLE_BATCH, "--data_path", str(corpus), "--save_dir", str(save_dir),
                              "--resume_from", str(universal)], env=launch_env_vars)
    assert "(universal) at step 20" in result.stdout
    assert_losses_follow(read_metrics(save_dir), read_metrics(reference_run)[20:], exact_steps=3, rel=1e-5)


def test_two_runs_in_one_process_train_alike(tmp_path):
    """``pretrain`` releases DeepSpeed's cached groups with its process group: a second MoE run in the same
    process (a notebook, a sweep) starts clean and logs the first run's losses."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", lines=200)
    runs = [tmp_path / "first", tmp_path / "second"]
    with one_rank_in_this_process({"MINIMIND_CACHE_DIR": str(tmp_path / "cache"), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(free_local_port())}):
        for save_dir in runs:
            args = [*TINY_MODEL, "--use_moe", "1", "--data_path", str(corpus), "--max_steps", "3", "--batch_size", "4",
                    "--deepspeed_config", str(FP32_CONFIG),
                    "--save_dir", str(save_dir)]
            assert pretrain_ds.main(args) == 0
    first, second = ([row["loss"] for row in read_metrics(save_dir)] for save_dir in runs)
    assert len(first) == 3 and second == first
