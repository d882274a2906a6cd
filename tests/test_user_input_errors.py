"""One error family: every bad flag, JSON value or missing package is a one-line ``UserInputError``
(exit status 2) raised before anything heavy runs, never a traceback from torch or DeepSpeed."""

import ast
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch.distributed as dist

import pretrain_ds
from minimind.checkpoint.__main__ import main as checkpoint_main
from minimind.errors import ConfigError, MissingDependencyError, UserInputError
from minimind.plan import main as plan_main
from minimind.tokenizer.train import main as tokenizer_main
from minimind.training.ds_config.load import read_ds_config, resolve_ds_config
from minimind.training.hardware import offload_build as host_optimizer_build
from minimind.training.hardware.offload_build import check_host_optimizer_build
from tests.project_tree import REPO_ROOT, import_name, python_files

FP32_CONFIG = REPO_ROOT / "ds_configs" / "zero2_fp32.json"

# Errors that stop a run for a reason other than its input, each with its own exit status
# in pretrain_ds.py, and the kernel library's own error (translated into a ConfigError where
# a flag asks for the kernels).
NOT_INPUT_ERRORS = {"NonFiniteStepsError", "CheckpointWriteError", "StandaloneCodeError", "KernelUnavailableError"}


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    status = pretrain_ds.main(argv)
    return status, capsys.readouterr().err.strip()


@pytest.mark.parametrize("flags, named", [
    (["--learning_rate", "nan"], "--learning_rate: must be a finite number >= 0, got nan"),
    (["--learning_rate=-inf"], "--learning_rate: must be a finite number >= 0, got -inf"),
    (["--grad_clip", "-0.5"], "--grad_clip: must be a finite number >= 0, got -0.5"),
    (["--seed", "-3"], "--seed: must be at least 0"),
    (["--seed", str(2**32)], "--seed: must be at most 4294967295, got 4294967296"),
    (["--collective_timeout", "1e17"], "--collective_timeout: expected an integer, got '1e17'"),
    (["--rendezvous_timeout", str(10**17)], "--rendezvous_timeout: must be at most 2592000"),
    (["--max_seq_len", "1"], "--max_seq_len: must be at least 2, got 1"),
    (["--batch_size", "0"], "--batch_size: must be at least 1, got 0"),
    (["--warmup_steps", "-1"], "--warmup_steps: must be at least 0"),
    (["--hidden_size", "wide"], "--hidden_size: expected an integer, got 'wide'"),
    (["--ep_size", "0"], "--ep_size: must be at least 1"),
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--max_seq_len", "40000"], "--max_seq_len 40000 exceeds the model's max_position_embeddings 32768"),
    (["--eval_fraction", "0.7"], "--eval_fraction: must be at most 0.5, got 0.7"),
    (["--eval_batches", "-1"], "--eval_batches: must be at least 0, got -1"),
    (["--eval_fraction", "0.1", "--eval_data_path", "eval.jsonl"],
     "--eval_data_path and --eval_fraction both name a validation set; pass one"),
    (["--eval_data_path", "/no/such/eval.jsonl"], "/no/such/eval.jsonl"),
    (["--sample_prompts", "/no/such/prompts.txt"], "--sample_prompts /no/such/prompts.txt: cannot read it"),
    (["--data_path", "/no/such/folder/*.jsonl"], "/no/such/folder/*.jsonl: the pattern matches no file"),
    (["--data_path", "web.jsonl:0.7", "code.parquet:-0.3"],
     "--data_path: code.parquet:-0.3: the weight '-0.3' is not a positive number"),
    (["--data_path", "web.jsonl:0.7", "code.parquet"], "--data_path: code.parquet has no weight while other entries"),
    (["--mixture_exhaust", "cycle"], "--mixture_exhaust: invalid choice: 'cycle'"),
    (["--mixture_exhaust", "stop"], "--mixture_exhaust stop applies to a mixture: give every --data_path entry a"),
])
def test_bad_flags_are_one_line_before_the_process_group(flags, named, tmp_path, capsys):
    status, err = run_main(["--save_dir", str(tmp_path), *flags], capsys)
    assert status == 2 and err.count("\n") == 0, err
    assert err.startswith("pretrain_ds.py: error: ") and named in err
    assert not dist.is_initialized()


def config_with(tmp_path: Path, change) -> Path:
    """zero2_fp32.json with ``change(config)`` applied, written to a temporary file."""
    config = json.loads(FP32_CONFIG.read_text())
    change(config)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))  # json writes NaN and Infinity as such
    return path


def set_key(*keys_and_value):
    """A ``change`` that sets the nested key ``keys[:-1]`` to ``keys[-1]``."""
    *keys, value = keys_and_value

    def change(config: dict) -> None:
        section = config
        for key in keys[:-1]:
            section = section.setdefault(key, {})
        section[keys[-1]] = value

    return change


@pytest.mark.parametrize("change, named", [
    (set_key("optimizer", "params", "lr", float("nan")), "optimizer.params.lr is nan, not a finite number"),
    (set_key("gradient_clipping", float("inf")), "gradient_clipping is inf, not a finite number"),
    (set_key("gradient_clipping", -1.0), "gradient_clipping must be a number >= 0"),
    (set_key("train_micro_batch_size_per_gpu", True), "train_micro_batch_size_per_gpu must be a positive integer"),
    (set_key("gradient_accumulation_steps", 2.5), "gradient_accumulation_steps must be a positive integer"),
    (set_key("zero_optimization", "stage", 7), "zero_optimization.stage: Input should be 0, 1, 2, 3"),
    (set_key("zero_optimization", "reduce_bucket_size", -1), "zero_optimization.reduce_bucket_size: Input should be"),
    (set_key("zero_optimization", "offload_optimizer", {"device": "gpu"}),
     "zero_optimization.offload_optimizer.device: Input should be 'none', 'cpu' or 'nvme'"),
    (set_key("bf16", "enabled", "often"), "bf16.enabled: Input should be a valid boolean"),
    (set_key("optimizer", "params", "betas", [0.9, 1.5]), "optimizer.params.betas must be two numbers in [0, 1)"),
    (set_key("optimizer", "params", "eps", -1e-8), "optimizer.params.eps must be a number >= 0"),
    (set_key("optimizer", "params", "weight_decay", "0.1"), "optimizer.params.weight_decay must be a number >= 0"),
    (set_key("optimizer", "AdamW"), "optimizer must be a JSON object"),
    (set_key("optimizer", "type", None), "optimizer.type None is not an optimizer DeepSpeed or torch knows"),
    (set_key("optimizer", "type", "Adamm"), "optimizer.type 'Adamm' is not an optimizer DeepSpeed or torch knows "
                                            "(did you mean 'Adam'?)"),
    (set_key("scheduler", {"type": "WarmupCosinLR"}), "(did you mean 'WarmupCosineLR'?)"),
    (set_key("scheduler", {"type": "WarmupLR", "params": {"warmup_max_lr": "0.001"}}),
     "scheduler.params.warmup_max_lr must be a number, got '0.001'"),
    (set_key("bf16", "enabled", "auto"), "bf16.enabled is \"auto\""),
    (set_key("zero_optimization", "leaf_module", 3), "zero_optimization: "),
    (set_key("scheduler", {"type": "WarmupLR", "params": []}), "scheduler.params must be a JSON object"),
    (set_key("tensorboard", {"enabled": True, "output_path": 3}), "tensorboard.output_path: Input should be"),
])
def test_bad_json_values_are_one_line_config_errors(change, named, tmp_path):
    path = config_with(tmp_path, change)
    with pytest.raises(ConfigError) as caught:
        resolve_ds_config(path, data_parallel=2, fp16_supported=False)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and named in message and "\n" not in message


def test_a_bad_json_value_stops_the_entry_point_in_one_line(tmp_path, capsys):
    path = config_with(tmp_path, set_key("optimizer", "params", "weight_decay", float("inf")))
    status, err = run_main(["--save_dir", str(tmp_path / "out"), "--deepspeed_config", str(path)], capsys)
    assert status == 2
    assert err == f"pretrain_ds.py: error: {path}: optimizer.params.weight_decay is inf, not a finite number"


def test_values_the_flags_replace_and_deepspeed_defaults_are_accepted(tmp_path):
    def hugging_face_style(config: dict) -> None:
        config.update(train_batch_size="auto", train_micro_batch_size_per_gpu="auto", steps_per_print=None,
                      gradient_accumulation_steps="auto", gradient_clipping="auto")
        config["optimizer"]["params"]["lr"] = "auto"

    path = config_with(tmp_path, hugging_face_style)
    config, batch = resolve_ds_config(path, data_parallel=2, fp16_supported=False, micro_batch=3, accumulation=5,
                                      grad_clip=0.5, learning_rate=1e-3)
    assert (config["train_batch_size"], batch.global_batch, batch.grad_clip) == (30, 30, 0.5)
    assert config["optimizer"]["params"]["lr"] == 1e-3
    with pytest.raises(ConfigError, match="train_batch_size must be a positive integer, got 'auto'"):
        resolve_ds_config(path, data_parallel=2, fp16_supported=False)


def test_use_wandb_without_the_package_stops_before_the_process_group(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "wandb" else real_find_spec(name, *rest))
    status, err = run_main(["--save_dir", str(tmp_path), "--use_wandb"], capsys)
    assert status == 2 and err == "pretrain_ds.py: error: --use_wandb needs the wandb package: pip install wandb"
    assert not dist.is_initialized()


OFFLOAD_CONFIG = REPO_ROOT / "ds_configs" / "zero2_offload_bf16.json"


@pytest.fixture
def unbuilt_host_optimizer(tmp_path, monkeypatch):
    """A node where DeepSpeed has no prebuilt CPU Adam and torch's extension cache (in ``tmp_path``) is empty,
    with every build tool present unless a test takes one away."""
    monkeypatch.setattr(host_optimizer_build, "op_prebuilt", lambda op: False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    monkeypatch.setattr(host_optimizer_build.cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setenv("CXX", "g++")
    monkeypatch.setattr(host_optimizer_build.shutil, "which", lambda name: f"/usr/bin/{name}")
    headers = tmp_path / "include"
    headers.mkdir()
    (headers / "Python.h").touch()
    monkeypatch.setattr(host_optimizer_build.sysconfig, "get_path", lambda name, scheme=None: str(headers))
    return headers


def test_offload_without_a_compiler_stops_the_entry_point_in_one_line(unbuilt_host_optimizer, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(host_optimizer_build.shutil, "which", lambda name: None)
    status, err = run_main(["--save_dir", str(tmp_path / "run"), "--deepspeed_config", str(OFFLOAD_CONFIG)], capsys)
    assert status == 2 and err.count("\n") == 0, err
    assert err.startswith(f"pretrain_ds.py: error: {OFFLOAD_CONFIG}: ZeRO-Offload steps the optimizer with "
                          "DeepSpeed's cpu_adam op")
    assert "a C++ compiler, g++ (apt install g++, or set CXX)" in err and "DS_BUILD_CPU_ADAM=1" in err
    assert "ninja" not in err and "Python.h" not in err
    assert not dist.is_initialized()


def test_offload_names_every_missing_build_tool(unbuilt_host_optimizer, monkeypatch):
    monkeypatch.setattr(host_optimizer_build.cpp_extension, "is_ninja_available", lambda: False)
    (unbuilt_host_optimizer / "Python.h").unlink()
    with pytest.raises(MissingDependencyError) as error:
        check_host_optimizer_build(read_ds_config(OFFLOAD_CONFIG), "offload.json")
    message = str(error.value)
    assert "ninja (pip install ninja)" in message and f"{unbuilt_host_optimizer / 'Python.h'} (apt install python" \
        in message and "C++ compiler" not in message and "\n" not in message


def test_a_cached_build_needs_ninja_only_and_a_prebuilt_op_nothing(unbuilt_host_optimizer, tmp_path, monkeypatch):
    monkeypatch.setattr(host_optimizer_build.shutil, "which", lambda name: None)
    (unbuilt_host_optimizer / "Python.h").unlink()
    build = tmp_path / "torch_extensions" / "cpu_adam"  # where torch's loader builds it under TORCH_EXTENSIONS_DIR
    build.mkdir(parents=True)
    (build / "cpu_adam.so").touch()
    check_host_optimizer_build(read_ds_config(OFFLOAD_CONFIG), "offload.json")
    monkeypatch.setattr(host_optimizer_build.cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(MissingDependencyError, match=r"lacks ninja \(pip install ninja\); install them"):
        check_host_optimizer_build(read_ds_config(OFFLOAD_CONFIG), "offload.json")
    monkeypatch.setattr(host_optimizer_build, "op_prebuilt", lambda op: True)
    check_host_optimizer_build(read_ds_config(OFFLOAD_CONFIG), "offload.json")


@pytest.mark.parametrize("config", ["zero2_bf16.json", "zero2_fp32.json", "zero3_bf16.json", "offload_torch_adam"])
def test_a_config_without_deepspeed_s_host_optimizer_never_runs_the_check(monkeypatch, config):
    def probe(op):
        raise AssertionError("the build tools were checked")

    monkeypatch.setattr(host_optimizer_build, "missing_build_tools", probe)
    if config == "offload_torch_adam":  # torch's AdamW steps the offloaded optimizer: nothing to build
        ds_config = read_ds_config(OFFLOAD_CONFIG)
        ds_config["optimizer"]["params"]["torch_adam"] = True
    else:
        ds_config = read_ds_config(REPO_ROOT / "ds_configs" / config)
    check_host_optimizer_build(ds_config, config)
    with pytest.raises(AssertionError, match="the build tools were checked"):  # the probe does trip when reached
        check_host_optimizer_build(read_ds_config(OFFLOAD_CONFIG), "offload.json")


def test_other_commands_report_bad_flags_in_one_line(tmp_path, capsys):
    assert checkpoint_main(["to-universal", str(tmp_path), str(tmp_path / "u"), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: argument --workers: must be at least 1, got 0 (see --help)"
    with pytest.raises(SystemExit) as stopped:
        plan_main(["--reserve", "1.5"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == ("python -m minimind.plan: error: reserve must be in [0, 1) and "
                                               "gpu_memory above 0, got 1.5 and 80")
    with pytest.raises(SystemExit) as stopped:
        tokenizer_main(["--corpus", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "tok")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m minimind.tokenizer.train: error: ") and "none.jsonl: cannot open" in err
    assert err.count("\n") == 0


def project_error_classes() -> list[tuple[str, str, list[str]]]:
    """``(module, class, base names)`` of every exception class the project defines."""
    found = []
    for path in python_files("minimind", "kernels"):
        module = import_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.append((module, node.name, [ast.unparse(base) for base in node.bases]))
    return found


def test_every_user_facing_error_type_is_a_user_input_error():
    classes = project_error_classes()
    assert {"DataError", "ConfigError", "CheckpointError", "TokenizerLayoutError"} <= {name for _, name, _ in classes}
    for module, name, _ in classes:
        error_class = getattr(importlib.import_module(module), name)
        assert issubclass(error_class, UserInputError) != (name in NOT_INPUT_ERRORS), f"{module}.{name}"
