"""Expert-parallel (AutoEP) MoE checkpoints through the project's commands: universal
conversion across world and expert-parallel sizes, and export to MiniMind's keys.

Module-scoped runs of a tiny MoE model (4 routed experts, ZeRO-2 fp32), each a few seconds:
- ``ep2_run``: 2 ranks, ep_size 2, micro-batch 2, accumulation 2, 4 steps, checkpoints at 2 and 4;
- ``ep1_run``: 1 rank (in the test's process, no launcher), ep_size 1 (AutoEP with every expert local), micro-batch
  4, otherwise the same;
- each converted at step 2 with ``python -m minimind.checkpoint to-universal`` and resumed at
  the other layout (2/ep2 -> 1/ep1 and 1/ep1 -> 2/ep2).

A plain MoE run (no ``--ep_size``) cannot resume an AutoEP universal checkpoint: its
parameters are per-expert Linear layers, the universal folder holds AutoEP's fused
``experts.w{1,2,3}``; ``--ep_size 1`` gives the AutoEP layout on one rank.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pretrain_ds
from minimind.checkpoint import locate_checkpoint
from minimind.checkpoint.__main__ import main as checkpoint_main
from minimind.checkpoint.locate import read_client_state
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.pth_weights import load_minimind_pth
from tests.launcher import (
    FP32_CONFIG,
    TINY_MODEL,
    launch,
    main_in_process,
    read_eval_rows,
    read_metrics,
    read_samples,
)
from tests.test_checkpoint_commands import CLEAN_LOAD, PROMPT

# Every run also validates on 5% of the corpus held out and continues the default prompts, at each save and
# at the end: AutoEP exchanges tokens inside each forward, so the ranks must evaluate in lockstep.
TINY_MOE = [*TINY_MODEL, "--use_moe", "1", "--deepspeed_config", str(FP32_CONFIG), "--accumulation_steps", "2",
            "--max_steps", "4", "--eval_fraction", "0.05", "--sample_prompts", "default", "--sample_tokens", "4"]
LAYOUTS = {2: ["--batch_size", "2", "--ep_size", "2"], 1: ["--batch_size", "4", "--ep_size", "1"]}
MOMENTS = ("exp_avg", "exp_avg_sq")
EXPERT_NAMES = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def train(launch_dir: Path, corpus: Path, env: dict, ranks: int, name: str, *extra: str):
    """``TINY_MOE`` at the layout of ``ranks`` launched ranks, or of one process in this one (no launcher);
    returns the save folder and the run's output."""
    save_dir = launch_dir / name
    args = [*TINY_MOE, *LAYOUTS[ranks], "--data_path", str(corpus), "--save_dir", str(save_dir), *extra]
    result = launch(ranks, args, env=env) if ranks > 1 else main_in_process(args, env=env)
    return save_dir, result


def to_universal(save_dir: Path) -> Path:
    """``python -m minimind.checkpoint to-universal`` of the step-2 tag (its ``main``, in this process)."""
    destination = save_dir.parent / f"{save_dir.name}_universal"
    assert checkpoint_main(["to-universal", str(save_dir / "checkpoints" / "step_2"), str(destination)]) == 0
    return destination / "step_2"


@pytest.fixture(scope="module")
def ep2_run(launch_dir, corpus, launch_env_vars) -> Path:
    return train(launch_dir, corpus, launch_env_vars, 2, "ep2", "--save_interval", "2")[0]


@pytest.fixture(scope="module")
def ep1_run(launch_dir, corpus, launch_env_vars) -> Path:
    return train(launch_dir, corpus, launch_env_vars, 1, "ep1", "--save_interval", "2")[0]


@pytest.fixture(scope="module")
def ep2_universal(ep2_run) -> Path:
    return to_universal(ep2_run)


def assert_losses_continue(resumed: list[dict], uninterrupted: list[dict]) -> None:
    assert [m["step"] for m in resumed] == [3, 4]
    for a, b in zip(resumed, uninterrupted[2:], strict=True):
        for key in ("loss", "aux_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)


def test_ep2_and_ep1_runs_agree(ep2_run, ep1_run):
    """The two layouts train the same model on the same global batch (so either can continue the other),
    and evaluate it alike: the same validation losses and greedy samples."""
    sharded, single = read_metrics(ep2_run), read_metrics(ep1_run)
    assert [m["step"] for m in sharded] == [m["step"] for m in single] == [1, 2, 3, 4]
    for a, b in zip(sharded, single, strict=True):
        for key in ("loss", "aux_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
        assert a["aux_loss"] > 0
    assert_evaluations_agree(ep2_run, ep1_run, steps=[2, 4])
    assert read_samples(ep2_run) == read_samples(ep1_run)


def assert_evaluations_agree(run: Path, other: Path, steps: list[int]) -> None:
    """``run``'s validation rows at ``steps`` match ``other``'s at the same steps."""
    rows = {row["step"]: row for row in read_eval_rows(run)}
    other_rows = {row["step"]: row for row in read_eval_rows(other)}
    assert sorted(rows) == steps
    for step in steps:
        assert rows[step]["eval_tokens"] == other_rows[step]["eval_tokens"]
        assert rows[step]["val_loss"] == pytest.approx(other_rows[step]["val_loss"], rel=1e-5)



def test_ep2_universal_resumes_on_one_rank_at_ep1(launch_dir, corpus, launch_env_vars, ep2_run, ep2_universal):
    save_dir, result = train(launch_dir, corpus, launch_env_vars, 1, "ep2_to_ep1", "--save_interval", "100",
                             "--resume_from", str(ep2_universal))
    assert "(universal) at step 2" in result.stdout
    assert_losses_continue(read_metrics(save_dir), read_metrics(ep2_run))
    assert_evaluations_agree(save_dir, ep2_run, steps=[4])


def test_ep1_universal_resumes_on_two_ranks_at_ep2(launch_dir, corpus, launch_env_vars, ep1_run):
    universal = to_universal(ep1_run)
    save_dir, result = train(launch_dir, corpus, launch_env_vars, 2, "ep1_to_ep2", "--save_interval", "100",
                             "--resume_from", str(universal))
    assert "(universal) at step 2" in result.stdout
    assert_losses_continue(read_metrics(save_dir), read_metrics(ep1_run))
    assert_evaluations_agree(save_dir, ep1_run, steps=[4])


def test_plain_moe_run_is_told_to_pass_ep_size(ep2_universal, corpus, tmp_path, capsys, monkeypatch):
    """Without --ep_size the model has per-expert Linear layers the fused universal files cannot fill:
    a one-line refusal before anything is built, instead of DeepSpeed's missing-file error."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert pretrain_ds.main([*TINY_MOE, "--batch_size", "4", "--data_path", str(corpus),
                             "--save_dir", str(tmp_path / "out"), "--resume_from", str(ep2_universal)]) == 2
    error = capsys.readouterr().err.strip()
    assert "resume it with --ep_size" in error and str(ep2_universal) in error and "\n" not in error


def zero_state_by_name(tag_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """fp32 weight and Adam moments of every parameter, re-assembled from the ZeRO-2 shards of an AutoEP run.

    Written from the layout, not through the code under test: each param group is one flat
    fp32 buffer per rank, parameters in ``param_shapes`` order. The dense group is split
    over all ranks (partitions concatenated in rank order); the expert group of this run
    (expert data-parallel size 1) is whole on each rank but holds that rank's local experts,
    rank r owning global experts r*E_local..(r+1)*E_local-1, so they are stacked in rank order.
    """
    model_states = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")
    files = sorted(tag_dir.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=lambda p: int(p.name.split("_")[3]))
    shards = [torch.load(f, weights_only=False, map_location="cpu")["optimizer_state_dict"] for f in files]

    def flat(shard: dict, group: int) -> dict[str, torch.Tensor]:
        moments = shard["base_optimizer_state"]["state"][group]
        return {"fp32": shard["single_partition_of_fp32_groups"][group], **{m: moments[m] for m in MOMENTS}}

    def cut(buffers: dict[str, torch.Tensor], shapes: dict) -> dict[str, dict[str, torch.Tensor]]:
        out, offset = {}, 0
        for name, shape in shapes.items():
            numel = math.prod(shape)
            out[name] = {kind: buffer[offset: offset + numel].view(shape) for kind, buffer in buffers.items()}
            offset += numel
        return out

    state = {}
    for group, shapes in enumerate(model_states["param_shapes"]):
        if any(".experts.w" in name for name in shapes):
            per_rank = [cut(flat(shard, group), shapes) for shard in shards]
            state.update({name: {kind: torch.cat([part[name][kind] for part in per_rank])
                                 for kind in per_rank[0][name]} for name in shapes})
        else:
            buffers = [flat(shard, group) for shard in shards]
            state.update(cut({kind: torch.cat([b[kind] for b in buffers]) for kind in buffers[0]}, shapes))
    return state


def test_to_universal_keeps_every_expert_and_its_adam_moments(ep2_run, ep2_universal):
    expected = zero_state_by_name(ep2_run / "checkpoints" / "step_2")
    assert model_shape(expected, "model.layers.0.mlp.experts.w1") == (4, 192, 64)  # every expert, fused
    zero = ep2_universal / "zero"
    names = sorted(p.parent.name for p in zero.glob("*/exp_avg.pt"))
    assert names == sorted(expected)
    for name in names:
        for kind in ("fp32", *MOMENTS):
            saved = torch.load(zero / name / f"{kind}.pt", weights_only=False)["param"]
            torch.testing.assert_close(saved, expected[name][kind], rtol=0, atol=0, msg=f"{name} {kind}")


def model_shape(state: dict, name: str) -> tuple:
    return tuple(state[name]["fp32"].shape)


def minimind_reference_weights(tag_dir: Path) -> dict[str, torch.Tensor]:
    """MiniMind's state dict from the ZeRO shards, renamed by hand (router -> gate, fused experts split)."""
    weights = {}
    for name, kinds in zero_state_by_name(tag_dir).items():
        tensor = kinds["fp32"]
        prefix, _, fused = name.rpartition(".experts.")
        if fused in EXPERT_NAMES:
            for expert in range(tensor.shape[0]):
                weights[f"{prefix}.experts.{expert}.{EXPERT_NAMES[fused]}.weight"] = tensor[expert]
        else:
            weights[name.replace(".mlp.router.gate.", ".mlp.gate.")] = tensor
    weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    return weights


def checkpoint_model(checkpoints: Path) -> MiniMindForCausalLM:
    config = read_client_state(locate_checkpoint(checkpoints))["model_config"]
    return MiniMindForCausalLM(MiniMindConfig.from_dict({**config, "kernel_impl": "torch"})).eval()


@pytest.mark.parametrize("source", ["zero", "universal"])
def test_pth_export_of_autoep_checkpoint_has_every_expert(ep2_run, ep2_universal, tmp_path, source):
    checkpoints = ep2_run / "checkpoints" / "step_2" if source == "zero" else ep2_universal
    assert checkpoint_main(["export", str(checkpoints), str(tmp_path / "w.pth"), "--format", "pth",
                            "--dtype", "fp32"]) == 0
    model = load_minimind_pth(checkpoint_model(checkpoints), tmp_path / "w.pth")
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in model.state_dict()
    for key, tensor in minimind_reference_weights(ep2_run / "checkpoints" / "step_2").items():
        torch.testing.assert_close(model.state_dict()[key], tensor, rtol=0, atol=0, msg=key)


def test_pth_export_matches_the_weights_training_wrote(ep2_run, tmp_path):
    """The final checkpoint exported (default fp16) equals ``pretrain_64_moe.pth`` written by the run itself."""
    checkpoints = ep2_run / "checkpoints"
    assert checkpoint_main(["export", str(checkpoints), str(tmp_path / "w.pth"), "--format", "pth"]) == 0
    exported = torch.load(tmp_path / "w.pth", weights_only=True)
    trained = torch.load(ep2_run / "pretrain_64_moe.pth", weights_only=True)
    assert sorted(exported) == sorted(trained)
    for key, tensor in exported.items():
        assert tensor.dtype == torch.float16
        torch.testing.assert_close(tensor, trained[key], rtol=0, atol=0, msg=key)  # both fp16 of the same fp32
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        logits = load_minimind_pth(checkpoint_model(checkpoints), tmp_path / "w.pth")(ids).logits
        fp32 = checkpoint_model(checkpoints)
        fp32.load_state_dict(minimind_reference_weights(checkpoints / "step_4"), strict=True)
        # fp16 weights vs the fp32 masters: logits within fp16 rounding of the weights
        torch.testing.assert_close(logits, fp32(ids).logits, rtol=0, atol=5e-3)


def test_hf_export_of_autoep_checkpoint_loads_without_the_repository(ep2_run, tmp_path):
    checkpoints = ep2_run / "checkpoints"
    folder = tmp_path / "hf"
    assert checkpoint_main(["export", str(checkpoints), str(folder), "--format", "hf", "--dtype", "fp32"]) == 0
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    # minimind2 MoE has shared experts: the export is the custom code, loaded with trust_remote_code
    result = subprocess.run([sys.executable, "-c", CLEAN_LOAD, str(folder), json.dumps(PROMPT), str(tmp_path / "o.pt"),
                             "True"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = checkpoint_model(checkpoints)
    reference.load_state_dict(minimind_reference_weights(checkpoints / "step_4"), strict=True)
    with torch.no_grad():
        expected = reference(torch.tensor(PROMPT)).logits
    torch.testing.assert_close(torch.load(tmp_path / "o.pt", weights_only=True)["logits"], expected,
                               rtol=1e-6, atol=1e-6)
