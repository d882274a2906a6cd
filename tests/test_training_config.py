"""DeepSpeed config checks, batch arithmetic, flags and the learning-rate schedule (no processes launched)."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from deepspeed.accelerator import get_accelerator

import pretrain_ds
from minimind.data import DataError
from minimind.errors import ConfigError
from minimind.model import MiniMindConfig
from minimind.model.precision import precision_of
from minimind.training import stage_run
from minimind.training.arguments import model_config_kwargs, parse_args, resolved_flags, run_config
from minimind.training.config import CPU_DEMO
from minimind.training.distributed import process_group
from minimind.training.distributed.process_group import lost_a_peer
from minimind.training.distributed.world import launched_world
from minimind.training.ds_config.load import read_ds_config, resolve_ds_config
from minimind.training.loop.lr_schedule import minimind_lr_factor, minimind_scheduler
from minimind.training.metrics.logger import model_flops_per_token
from minimind.training.position import TrainingPosition
from minimind.training.run.announce import announce
from minimind.training.run_dir.checks import disk_space_warning

CONFIG_DIR = Path(__file__).resolve().parents[1] / "ds_configs"
SHIPPED = sorted(CONFIG_DIR.glob("*.json"))


def write_config(tmp_path: Path, config: dict, name: str = "ds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_are_valid(path):
    config, plan = resolve_ds_config(path, data_parallel=4, fp16_supported=True)
    assert config["train_batch_size"] == plan.micro_batch * plan.accumulation * 4
    assert plan.grad_clip == 1.0


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_never_need_a_cuda_toolkit_build(path):
    """DeepSpeed's own AdamW JIT-builds its FusedAdam CUDA extension (nvcc, a matching CUDA_HOME);
    every config uses torch's fused AdamW instead, except CPU offload, which keeps DeepSpeedCPUAdam."""
    config = read_ds_config(path)
    if config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu":
        assert not config["optimizer"]["params"].get("torch_adam")
        return
    assert config["optimizer"]["type"] == "AdamW"
    assert config["optimizer"]["params"]["torch_adam"] is True and config["optimizer"]["params"]["fused"] is True


def test_required_configs_exist_with_their_precision():
    expected = {
        "zero2_bf16.json": ("bf16", 2), "zero2_fp16.json": ("fp16", 2), "zero2_fp32.json": ("fp32", 2),
        "zero1_bf16.json": ("bf16", 1), "zero3_bf16.json": ("bf16", 3), "zero2_offload_bf16.json": ("bf16", 2),
    }
    for name, (precision, stage) in expected.items():
        config = read_ds_config(CONFIG_DIR / name)
        assert precision_of(config) == precision and config["zero_optimization"]["stage"] == stage, name
    fp16 = read_ds_config(CONFIG_DIR / "zero2_fp16.json")["fp16"]
    assert {"initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale"} <= set(fp16)
    offload = read_ds_config(CONFIG_DIR / "zero2_offload_bf16.json")["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == "cpu"


def test_flags_override_the_json_and_the_global_batch_follows(tmp_path):
    path = write_config(tmp_path, {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 4,
                                   "train_batch_size": 64, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}})
    config, plan = resolve_ds_config(path, data_parallel=3, fp16_supported=False, micro_batch=5,
                                     accumulation=2, grad_clip=0.5, learning_rate=2e-4)
    assert (plan.micro_batch, plan.accumulation, plan.data_parallel, plan.global_batch) == (5, 2, 3, 30)
    assert config["train_batch_size"] == 30 and config["gradient_clipping"] == 0.5
    assert config["optimizer"]["params"]["lr"] == 2e-4


@pytest.mark.parametrize(
    "config,message",
    [
        ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 10,
          "optimizer": {"type": "AdamW"}},
         r"ds\.json: train_batch_size 10 != micro-batch 4 x accumulation 2 x data-parallel size 2 = 16"),
        ({"train_micro_batch_size_per_gpu": 4, "zero_optimisation": {}, "optimizer": {"type": "AdamW"}},
         r"ds\.json: unknown key 'zero_optimisation' \(did you mean 'zero_optimization'\?\)"),
        ({"train_micro_batch_size_per_gpu": 4, "fp16": {"enabled": True}, "optimizer": {"type": "AdamW"}},
         r"ds\.json: fp16 is enabled but this accelerator does not support it"),
        ({"gradient_accumulation_steps": 2, "optimizer": {"type": "AdamW"}},
         r"ds\.json: set train_micro_batch_size_per_gpu"),
        ({"train_micro_batch_size_per_gpu": 0, "optimizer": {"type": "AdamW"}},
         r"ds\.json: train_micro_batch_size_per_gpu must be a positive integer"),
        ({"train_micro_batch_size_per_gpu": 2}, r"ds\.json: needs an \"optimizer\" section"),
    ],
)
def test_inconsistent_configs_are_one_line_errors(tmp_path, config, message):
    path = write_config(tmp_path, config)
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_ds_config(path, data_parallel=2, fp16_supported=False)
    assert "\n" not in str(caught.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.json: DeepSpeed config file not found"):
        resolve_ds_config(tmp_path / "nope.json", data_parallel=1, fp16_supported=True)
    (tmp_path / "bad.json").write_text("{\"train_micro_batch_size_per_gpu\": 4,,}")
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON"):
        resolve_ds_config(tmp_path / "bad.json", data_parallel=1, fp16_supported=True)


def run_main(argv, capsys) -> tuple[int, str]:
    status = pretrain_ds.main(argv)
    return status, capsys.readouterr().err.strip()


def test_entry_point_reports_config_errors_in_one_line_before_building_anything(tmp_path, capsys, monkeypatch):
    # An accelerator without fp16: DeepSpeed's CPU accelerator has it on processors with AVX512-FP16
    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: False)
    status, err = run_main(["--deepspeed_config", str(tmp_path / "missing.json"), "--save_dir", str(tmp_path)], capsys)
    assert status == 2 and err.count("\n") == 0
    assert err.startswith("pretrain_ds.py: error: ") and "missing.json: DeepSpeed config file not found" in err
    status, err = run_main(["--deepspeed_config", str(CONFIG_DIR / "zero2_fp16.json"), "--save_dir", str(tmp_path)],
                           capsys)
    assert status == 2 and "fp16 is enabled but this accelerator does not support it" in err


def test_entry_point_rejects_an_unwritable_save_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    status, err = run_main(["--save_dir", str(blocker / "out")], capsys)
    assert status == 2 and "--save_dir" in err and "not writable" in err and err.count("\n") == 0


def test_entry_point_rejects_a_missing_data_file_and_tokenizer(tmp_path, capsys):
    status, err = run_main(["--save_dir", str(tmp_path), "--data_path", str(tmp_path / "none.jsonl")], capsys)
    assert status == 2 and "none.jsonl" in err
    status, err = run_main(["--save_dir", str(tmp_path), "--tokenizer_path", str(tmp_path / "no-tok")], capsys)
    assert status == 2 and "no-tok" in err


@pytest.mark.parametrize(("flags", "expected"), [
    ([], (None, 0.01, "default", 50)),  # the CPU demonstration: every 50 steps
    (["--hidden_size", "64"], (None, 0.01, "default", 1000)),  # the bundled corpus: the save interval
    (["--sample_prompts", "p.txt"], (None, 0.01, "p.txt", 50)),
    (["--eval_fraction", "0"], (None, 0, "default", 50)),
    (["--eval_data_path", "v.jsonl", "--hidden_size", "64", "--save_interval", "7"], ("v.jsonl", None, "default", 7)),
    (["--data_path", "d.jsonl"], (None, None, None, 50)),  # the user's data: nothing unless asked
    (["--data_path", "d.jsonl", "--eval_fraction", "0.2", "--eval_interval", "3"], (None, 0.2, None, 3)),
])
def test_the_bundled_corpus_is_evaluated_unless_the_flags_say_otherwise(flags, expected):
    resolved, _ = resolved_flags(vars(parse_args(flags)), cpu_only=True)
    assert tuple(resolved[name] for name in ("eval_data_path", "eval_fraction", "sample_prompts",
                                             "eval_interval")) == expected


def test_cpu_demo_applies_only_without_size_flags():
    flags, demo = resolved_flags(vars(parse_args([])), cpu_only=True)
    assert demo and all(flags[name] == value for name, value in CPU_DEMO.items())
    assert flags["deepspeed_config"] is None  # the processor decides: cpu_ds_config
    flags, demo = resolved_flags(vars(parse_args(["--hidden_size", "64"])), cpu_only=True)
    assert not demo
    assert tuple(flags[name] for name in ("hidden_size", "num_hidden_layers", "max_seq_len", "batch_size")) == (
        64, 8, 340, None)
    assert flags["deepspeed_config"] is None
    flags, demo = resolved_flags(vars(parse_args(["--deepspeed_config", "mine.json"])), cpu_only=True)
    assert demo and flags["deepspeed_config"] == "mine.json"
    flags, demo = resolved_flags(vars(parse_args([])), cpu_only=False)
    assert not demo and flags["max_steps"] is None
    assert flags["deepspeed_config"].endswith("zero2_bf16.json")


def test_the_run_config_is_resolved_once_and_leaves_the_parsed_flags_alone():
    """Every default lands in the frozen config (and its recorded flags); the parsed namespace keeps what the
    command line said."""
    args = parse_args(["--deepspeed_config", str(CONFIG_DIR / "zero2_fp32.json"), "--data_path", "d.jsonl",
                       "--eval_fraction", "0.2"])
    parsed = dict(vars(args))
    with pytest.raises(DataError, match="d.jsonl: no such file"):
        run_config(args, cpu_only=True)
    assert vars(args) == parsed
    args = parse_args(["--deepspeed_config", str(CONFIG_DIR / "zero2_fp32.json"), "--max_steps", "7"])
    parsed = dict(vars(args))
    config = run_config(args, cpu_only=True)
    assert vars(args) == parsed and args.hidden_size is None and args.mixture_exhaust is None
    assert (config.model.hidden_size, config.data.max_seq_len, config.schedule.max_steps) == (512, 340, 7)
    assert (config.data.eval_fraction, config.evaluation.sample_prompts, config.evaluation.interval) == (
        0.01, "default", 1000)  # the bundled corpus's evaluation, every save interval
    assert config.flags["hidden_size"] == 512 and config.flags["mixture_exhaust"] == "repeat"
    assert not config.demo and not config.host.precision_timed and config.data.data_paths == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.hidden_size = 64
    with pytest.raises(TypeError):
        config.flags["hidden_size"] = 64


def test_minimind_cosine_schedule():
    total = 37
    for step in range(total + 1):
        expected = 0.1 + 0.45 * (1 + math.cos(math.pi * step / total))  # MiniMind's get_lr / lr_max
        assert minimind_lr_factor(step, total) == pytest.approx(expected, rel=1e-12)
    assert minimind_lr_factor(0, total) == pytest.approx(1.0) and minimind_lr_factor(total, total) == pytest.approx(0.1)
    assert minimind_lr_factor(0, total, warmup_steps=4) == pytest.approx(minimind_lr_factor(0, total) / 4)
    assert minimind_lr_factor(4, total, warmup_steps=4) == minimind_lr_factor(4, total)


def test_scheduler_drives_the_optimizer_and_round_trips_its_state():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=5e-4)
    scheduler = minimind_scheduler(optimizer, total_steps=10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4 * minimind_lr_factor(3, 10))
    restored = minimind_scheduler(torch.optim.AdamW([param], lr=5e-4), total_steps=10)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.last_epoch == 3


def test_entry_point_says_why_triton_kernels_cannot_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status, err = run_main(["--save_dir", str(tmp_path), "--kernels", "triton"], capsys)
    assert status == 2 and err.count("\n") == 0
    assert "--kernels triton cannot run: Triton kernels need a CUDA device (got cpu)" in err


def test_presets_fill_the_model_and_size_flags_override_them():
    flags, demo = resolved_flags(vars(parse_args(["--preset", "1b"])), cpu_only=True)
    assert not demo  # a preset is a size choice: no CPU demo
    kwargs = model_config_kwargs(flags)
    assert (kwargs["hidden_size"], kwargs["num_hidden_layers"], kwargs["num_attention_heads"]) == (2048, 22, 32)
    flags, _ = resolved_flags(vars(parse_args(["--preset", "145m-moe", "--num_hidden_layers", "2"])), cpu_only=False)
    kwargs = model_config_kwargs(flags)
    assert (kwargs["hidden_size"], kwargs["num_hidden_layers"], kwargs["use_moe"]) == (640, 2, True)
    flags, _ = resolved_flags(vars(parse_args(["--preset", "145m-moe", "--use_moe", "0"])), cpu_only=False)
    assert model_config_kwargs(flags)["use_moe"] is False


def test_model_family_flag_builds_minimind3_and_defaults_to_minimind2():
    flags, _ = resolved_flags(vars(parse_args([])), cpu_only=False)
    assert flags["model_family"] == "minimind2" and MiniMindConfig(**model_config_kwargs(flags)).hidden_size == 512
    flags, _ = resolved_flags(vars(parse_args(["--model_family", "minimind3"])), cpu_only=False)
    assert flags["hidden_size"] == 768  # minimind3's width, as upstream's trainer
    flags, _ = resolved_flags(vars(parse_args(["--hidden_size", "768", "--model_family", "minimind3"])), cpu_only=False)
    config = MiniMindConfig(**model_config_kwargs(flags))
    assert (config.model_family, config.num_key_value_heads, config.head_dim, config.intermediate_size) == (
        "minimind3", 4, 96, 2432)
    assert (config.rms_norm_eps, config.qk_norm) == (1e-6, True)
    flags, _ = resolved_flags(vars(parse_args(["--preset", "minimind-3-moe"])), cpu_only=False)
    assert flags["model_family"] == "minimind3" and model_config_kwargs(flags)["use_moe"] is True
    with pytest.raises(ConfigError, match="--model_family minimind2: preset minimind-3 is a minimind3 model"):
        resolved_flags(vars(parse_args(["--preset", "minimind-3", "--model_family", "minimind2"])), cpu_only=False)


def test_entry_point_rejects_an_unbuildable_model_in_one_line(tmp_path, capsys):
    status, err = run_main(["--save_dir", str(tmp_path), "--hidden_size", "100"], capsys)
    assert status == 2 and err.count("\n") == 0
    assert "hidden_size 100 is not divisible by num_attention_heads 8" in err


def test_flops_per_token_counts_only_the_experts_a_token_visits():
    dense = MiniMindConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    moe = MiniMindConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128, use_moe=True,
                         n_routed_experts=6, num_experts_per_tok=2)
    assert model_flops_per_token(dense, 1000, 32) == 6 * 1000 + 12 * 2 * 64 * 32
    idle_expert_params = 4 * 3 * 64 * 128 * 2  # 4 unvisited experts of 3 matrices, in 2 layers
    assert model_flops_per_token(moe, 1_000_000, 32) == 6 * (1_000_000 - idle_expert_params) + 12 * 2 * 64 * 32


def test_disk_space_warning_counts_the_checkpoints_kept_plus_the_one_being_written(tmp_path, monkeypatch):
    free = 500 * 2**30
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(free, 0, free))
    # bf16 module (2 bytes) + fp32 master and two Adam moments (12 bytes) per parameter, per
    # checkpoint, and the fp16 .pth (2 bytes): 3 checkpoints of this model just fit
    n_params = free // (3 * 14 + 2)
    assert disk_space_warning(tmp_path, n_params, module_bytes_per_param=2, keep=2) is None
    assert disk_space_warning(tmp_path, n_params + 1, module_bytes_per_param=2, keep=2) is not None
    warning = disk_space_warning(tmp_path, n_params, module_bytes_per_param=2, keep=3)
    assert warning.startswith(f"warning: {tmp_path} has 500.0 GiB free") and "--keep_checkpoints 3" in warning
    assert warning.count("\n") == 0


def test_a_collective_failing_because_a_peer_died_is_told_apart_from_other_errors():
    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:8110. This is typically caused by a remote worker crashing.")
    assert lost_a_peer(RuntimeError(gloo))
    assert lost_a_peer(RuntimeError(gloo.replace("closed", "reset")))
    assert lost_a_peer(torch.distributed.DistBackendError("NCCL communicator was aborted"))
    # NCCL's watchdog, as older torch raises it (a RuntimeError) and as a remote failure
    watchdog = ("[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=12, OpType=ALLREDUCE, "
                "NumelIn=2, NumelOut=2, Timeout(ms)=600000) ran for 600117 milliseconds before timing out.")
    assert lost_a_peer(RuntimeError(watchdog))
    assert lost_a_peer(RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there "
                                    "was a network error, NCCL version 2.21.5 ncclRemoteError"))
    assert not lost_a_peer(RuntimeError("NCCL error: invalid usage (run with NCCL_DEBUG=WARN for details)"))
    assert not lost_a_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not lost_a_peer(ValueError(gloo))


@pytest.mark.parametrize("tf32, device, config, expected", [
    (1, "cuda", {}, True),
    (0, "cuda", {}, False),
    (1, "cuda", {"bf16": {"enabled": True}}, False),
    (1, "cpu", {}, False),
])
def test_tf32_matmuls_only_for_fp32_training_on_cuda_unless_turned_off(tf32, device, config, expected):
    assert stage_run.tf32_matmuls(bool(tf32), config, torch.device(device)) is expected


def test_a_position_saved_by_an_earlier_format_still_resumes():
    saved = {"epoch": 1, "step": 5, "sample_in_epoch": 40, "extra": {}}  # "extra": a field since removed
    assert TrainingPosition.from_client_state(saved) == TrainingPosition(epoch=1, step=5, sample_in_epoch=40)


class OneGpuAccelerator:
    """What start-up asks DeepSpeed's accelerator, on a node with one CUDA GPU."""

    def device_name(self, index=None):
        return "cuda" if index is None else f"cuda:{index}"

    def device_count(self):
        return 1

    def is_fp16_supported(self):
        return True


@pytest.mark.parametrize("flags, capability, slow", [
    (["--deepspeed_config", str(CONFIG_DIR / "zero2_fp16.json")], (9, 0), True),
    (["--deepspeed_config", str(CONFIG_DIR / "zero2_fp32.json")], (9, 0), True),
    (["--deepspeed_config", str(CONFIG_DIR / "zero2_bf16.json")], (8, 0), True),  # an A100: no CUTLASS kernel
    (["--deepspeed_config", str(CONFIG_DIR / "zero2_bf16.json")], (9, 0), False),
    (["--deepspeed_config", str(CONFIG_DIR / "zero2_fp16_moe_ep.json"), "--ep_size", "1"], (9, 0), False),
])
def test_the_moe_slow_path_on_a_gpu_is_said_at_start(tmp_path, capsys, monkeypatch, flags, capability, slow):
    """The per-expert loop reads its counts on the host: a device sync per MoE layer, said in one line."""
    for module in (stage_run, process_group):
        monkeypatch.setattr(module, "get_accelerator", OneGpuAccelerator)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = run_config(parse_args(["--save_dir", str(tmp_path), "--use_moe", "1", "--kernels", "torch", *flags]),
                        cpu_only=False)
    inputs = stage_run.check_inputs(config)
    announce(config, inputs, launched_world(), None)
    said = [line for line in capsys.readouterr().out.splitlines() if "MoE slow path" in line]
    assert len(said) == int(slow)
    if slow:
        precision = "bf16" if "bf16" in flags[1] else "fp16" if "fp16" in flags[1] else "fp32"
        assert said[0].startswith(f"MoE slow path ({precision} on cuda:0, compute capability {capability[0]}.0): ")
        assert "a host sync per layer" in said[0] and "need bf16 on CUDA compute capability 9.x" in said[0]


def test_no_moe_slow_path_line_on_cpu_ranks_or_for_a_dense_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for flags in (["--use_moe", "1", "--deepspeed_config", str(CONFIG_DIR / "zero2_fp32.json")],
                  ["--deepspeed_config", str(CONFIG_DIR / "zero2_fp16.json")]):
        config = run_config(parse_args(["--save_dir", str(tmp_path), "--kernels", "torch", *flags]), cpu_only=True)
        announce(config, stage_run.check_inputs(config), launched_world(), None)
    assert "MoE slow path" not in capsys.readouterr().out
