"""``python -m minimind.checkpoint``: export (hf, pth), universal conversion and its errors.

The session's 2-rank ZeRO-2 fp32 ``reference_run`` provides the checkpoint every test reads.
"""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

import pretrain_ds
from minimind.checkpoint import CheckpointError, convert_to_universal, export_checkpoint, locate_checkpoint
from minimind.checkpoint.__main__ import main as checkpoint_main
from minimind.checkpoint.export import load_checkpoint_model
from minimind.checkpoint.manifest import manifest_of_folder
from minimind.checkpoint.safe_load import checkpoint_loading, load_checkpoint_file
from minimind.checkpoint.standalone_code import standalone_modeling_source
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.pth_weights import load_minimind_pth
from tests import universal_load_worker
from tests.launcher import REFERENCE_STEPS, one_rank_in_this_process, write_corpus
from tests.project_tree import WITHOUT_THE_PROJECT

PROMPT = [[1, 45, 300, 77, 1200, 9, 3000, 12]]


@pytest.fixture(scope="module")
def trained(reference_run) -> Path:
    """``checkpoints/`` of the session's 2-rank ZeRO-2 fp32 reference run (read only)."""
    return reference_run / "checkpoints"


def zero_fp32_weights(checkpoints: Path) -> dict[str, torch.Tensor]:
    """DeepSpeed's own consolidation of the checkpoint, independent of the code under test."""
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints))
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    return state


def reference_model(checkpoints: Path) -> MiniMindForCausalLM:
    """The in-repo model with the consolidated fp32 weights (kernels forced to the PyTorch path)."""
    location = locate_checkpoint(checkpoints)
    model, _ = load_checkpoint_model(location)
    model.config.kernel_impl = "torch"
    for module in model.modules():
        if hasattr(module, "kernel_impl"):
            module.kernel_impl = "torch"
    return model


def test_locate_accepts_root_and_tag(trained):
    from_root = locate_checkpoint(trained)
    from_tag = locate_checkpoint(trained / from_root.tag)
    assert from_root == from_tag
    assert from_root.tag == (trained / "latest").read_text().strip()


def test_pth_export_loads_strictly_with_equal_logits(trained, tmp_path):
    assert checkpoint_main(["export", str(trained), str(tmp_path / "w.pth"), "--format", "pth",
                            "--dtype", "fp32"]) == 0
    reference = reference_model(trained)
    model = MiniMindForCausalLM(MiniMindConfig(**{k: getattr(reference.config, k) for k in (
        "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")}, kernel_impl="torch"))
    load_minimind_pth(model, tmp_path / "w.pth")
    for key, tensor in zero_fp32_weights(trained).items():
        torch.testing.assert_close(model.state_dict()[key], tensor, rtol=0, atol=0, msg=key)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_pth_export_default_is_half(trained, tmp_path):
    written = export_checkpoint(locate_checkpoint(trained), tmp_path, fmt="pth").path
    assert written.name == "pretrain_64.pth"
    state = torch.load(written, weights_only=True)
    assert {t.dtype for t in state.values()} == {torch.float16}
    assert "lm_head.weight" in state


def test_standalone_code_imports_only_torch_transformers_and_stdlib():
    tree = ast.parse(standalone_modeling_source())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import)]
    roots = {alias.name.split(".")[0] for node in imports for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots <= {"torch", "transformers", "math", "dataclasses"}, roots
    assert not any(isinstance(node, ast.Name) and node.id == "kernel_ops" for node in ast.walk(tree))
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"MiniMindConfig", "MiniMindModel", "MiniMindForCausalLM"} <= defined


CLEAN_LOAD = WITHOUT_THE_PROJECT + """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, trust = sys.argv[1], sys.argv[4] == "True"  # a built-in architecture needs no remote code
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
generated = model.generate(ids, max_new_tokens=5, do_sample=False)
torch.save({"logits": logits, "generated": generated,
            "encoded": tokenizer("hello world")["input_ids"], "eos": tokenizer.eos_token_id}, sys.argv[3])
"""


@pytest.mark.parametrize("hf_arch, written", [
    ("custom", "wrote custom MiniMind code (load with trust_remote_code=True): asked for with --hf_arch custom"),
    ("auto", "wrote LlamaForCausalLM (built-in, no trust_remote_code): minimind2 dense is exactly "
             "LlamaForCausalLM's architecture"),
])
def test_hf_export_loads_without_the_repository(hf_arch, written, trained, tmp_path, capsys):
    folder = tmp_path / "hf"
    assert checkpoint_main(["export", str(trained), str(folder), "--format", "hf", "--dtype", "fp32",
                            "--hf_arch", hf_arch]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == written
    config = json.loads((folder / "config.json").read_text())
    for name in ("model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (folder / name).is_file(), name
    if hf_arch == "custom":
        assert config["model_type"] == "minimind"
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_minimind.MiniMindForCausalLM"
        assert (folder / "modeling_minimind.py").is_file()
    else:
        assert config["model_type"] == "llama" and "auto_map" not in config
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    result = subprocess.run([sys.executable, "-c", CLEAN_LOAD, str(folder), json.dumps(PROMPT), str(tmp_path / "o.pt"),
                             str(hf_arch == "custom")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "o.pt", weights_only=True)
    reference = reference_model(trained)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        expected = reference(ids).logits
    torch.testing.assert_close(out["logits"], expected, rtol=1e-6, atol=1e-6)  # same fp32 weights and math
    expected_ids = reference.generate(ids, max_new_tokens=5, do_sample=False)
    assert out["generated"].shape == (1, len(PROMPT[0]) + 5)
    assert out["generated"].tolist() == expected_ids.tolist()
    assert out["eos"] == 2 and len(out["encoded"]) > 0


@pytest.fixture(scope="module")
def universal_root(trained, tmp_path_factory) -> Path:
    """The trained checkpoint converted by the command line: ``{root}/{tag}`` and ``{root}/latest_universal``."""
    root = tmp_path_factory.mktemp("universal") / "uni"
    assert checkpoint_main(["to-universal", str(trained), str(root)]) == 0
    return root


def test_to_universal_keeps_weights_and_adam_moments(trained, universal_root):
    source = locate_checkpoint(trained)
    universal = locate_checkpoint(universal_root)
    assert universal.is_universal and universal.tag == source.tag
    assert (universal_root / "latest_universal").read_text().strip() == source.tag
    weights = zero_fp32_weights(trained)
    moments = adam_moments_by_name(trained, source.tag)
    zero = universal.tag_dir / "zero"
    names = sorted(p.parent.name for p in zero.glob("*/exp_avg.pt"))
    assert names == sorted(moments)
    # the tied lm_head gets its own folder holding only the shared fp32 value
    tied = torch.load(zero / "lm_head.weight" / "fp32.pt", weights_only=True)["param"]
    torch.testing.assert_close(tied, weights["model.embed_tokens.weight"], rtol=0, atol=0)
    for name in names:
        for state in ("fp32", "exp_avg", "exp_avg_sq"):
            saved = torch.load(zero / name / f"{state}.pt", weights_only=False)["param"]
            expected = weights[name] if state == "fp32" else moments[name][state]
            torch.testing.assert_close(saved, expected, rtol=0, atol=0, msg=f"{name} {state}")
    # the universal folder exports too, to the same weights
    model, _ = load_checkpoint_model(universal)
    for key, tensor in weights.items():
        torch.testing.assert_close(model.state_dict()[key], tensor, rtol=0, atol=0, msg=key)


def adam_moments_by_name(checkpoints: Path, tag: str) -> dict[str, dict[str, torch.Tensor]]:
    """exp_avg / exp_avg_sq of every parameter, cut out of the ZeRO-2 flat partitions of all ranks.

    Written from the ZeRO-2 layout (one flat fp32 group per param group, partitions
    concatenated in rank order, parameters laid out in ``param_shapes`` order), not through
    the code under test.
    """
    model_states = torch.load(checkpoints / tag / "mp_rank_00_model_states.pt", weights_only=False)
    files = sorted((checkpoints / tag).glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"),
                   key=lambda p: int(p.name.split("_")[3]))
    shards = [torch.load(f, weights_only=False)["optimizer_state_dict"] for f in files]
    moments = {}
    for group, shapes in enumerate(model_states["param_shapes"]):
        flat = {state: torch.cat([s["base_optimizer_state"]["state"][group][state] for s in shards])
                for state in ("exp_avg", "exp_avg_sq")}
        offset = 0
        for name, shape in shapes.items():
            numel = shape.numel()
            moments[name] = {state: flat[state][offset: offset + numel].view(shape) for state in flat}
            offset += numel
    return moments


def test_errors_are_one_line_and_name_the_path(trained, tmp_path, capsys):
    not_checkpoint = tmp_path / "empty"
    not_checkpoint.mkdir()
    with pytest.raises(CheckpointError, match=str(not_checkpoint)):
        locate_checkpoint(not_checkpoint)
    with pytest.raises(CheckpointError, match="no such file"):
        locate_checkpoint(tmp_path / "absent")
    missing_tag = tmp_path / "missing_tag"
    missing_tag.mkdir()
    (missing_tag / "latest").write_text("step_99")
    with pytest.raises(CheckpointError, match="step_99"):
        locate_checkpoint(missing_tag)
    assert checkpoint_main(["export", str(not_checkpoint), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(not_checkpoint) in err
    truncated = tmp_path / "truncated" / "step_2"
    truncated.mkdir(parents=True)
    data = (trained / locate_checkpoint(trained).tag / "mp_rank_00_model_states.pt").read_bytes()
    (truncated / "mp_rank_00_model_states.pt").write_bytes(data[: len(data) // 2])
    assert checkpoint_main(["export", str(truncated), str(tmp_path / "out2"), "--format", "pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mp_rank_00_model_states.pt" in err


def test_universal_destination_must_be_new(trained, universal_root, tmp_path):
    with pytest.raises(CheckpointError, match="already exists"):
        convert_to_universal(locate_checkpoint(trained), universal_root)
    with pytest.raises(CheckpointError, match="already a universal"):
        convert_to_universal(locate_checkpoint(universal_root), tmp_path / "uni2")


def test_universal_checkpoint_loads_on_one_rank(trained, universal_root, tmp_path):
    """2-rank ZeRO-2 -> universal -> a 1-rank engine with load_universal: weights, moments, step equal."""
    result_path = tmp_path / "loaded.pt"
    with one_rank_in_this_process():  # one rank needs no launcher
        universal_load_worker.main(str(universal_root), str(result_path))
    loaded = torch.load(result_path, weights_only=False)
    source = locate_checkpoint(trained)
    assert loaded["global_steps"] == REFERENCE_STEPS and loaded["position"]["step"] == REFERENCE_STEPS
    weights = zero_fp32_weights(trained)
    moments = adam_moments_by_name(trained, source.tag)
    assert sorted(loaded["params"]) == sorted(moments)
    for name, state in loaded["params"].items():
        torch.testing.assert_close(state["fp32"], weights[name], rtol=0, atol=0, msg=name)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[key], moments[name][key], rtol=0, atol=0, msg=f"{name} {key}")


def test_checkpoint_of_another_model_config_is_refused(trained, tmp_path, capsys):
    """Shards whose shapes disagree with the recorded model_config give a one-line error."""
    tag = locate_checkpoint(trained).tag
    forged = tmp_path / "forged" / tag
    shutil.copytree(trained / tag, forged)
    states = torch.load(forged / "mp_rank_00_model_states.pt", weights_only=False)
    states["model_config"] = {**states["model_config"], "intermediate_size": 128}
    torch.save(states, forged / "mp_rank_00_model_states.pt")
    manifest_of_folder(forged, world_size=2)  # a consistent forgery: the manifest cannot catch it
    assert checkpoint_main(["export", str(forged), str(tmp_path / "w.pth"), "--format", "pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(forged) in err and "model_config" in err


def test_inspect_summarises_zero_and_universal(trained, universal_root, capsys):
    for source, kind in ((trained, "ZeRO"), (universal_root, "universal")):
        assert checkpoint_main(["inspect", str(source)]) == 0
        out = capsys.readouterr().out
        assert f"({kind}, tag step_{REFERENCE_STEPS})" in out
        assert f"step: {REFERENCE_STEPS}" in out and "data-parallel world size: 2" in out
        assert "expert-parallel size: none" in out
        assert "ZeRO stage: 2; precision: fp32" in out and "hidden_size=64" in out


class ForeignPayload:
    """A pickled object whose unpickling creates ``marker``: code a checkpoint must not run unasked."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def poisoned_copy(trained: Path, destination: Path, file_name: str, marker: Path) -> Path:
    """A copy of the checkpoint's latest tag whose ``file_name`` also carries a ``ForeignPayload``, with
    a manifest that matches (an attacker writes one too: only the weights-only load stops the payload)."""
    tag = locate_checkpoint(trained).tag
    shutil.copytree(trained / tag, destination / tag)
    (destination / "latest").write_text(tag)
    state = torch.load(destination / tag / file_name, weights_only=False)
    state["payload"] = ForeignPayload(marker)
    torch.save(state, destination / tag / file_name)
    manifest_of_folder(destination / tag, world_size=2)
    return destination


def assert_same_content(loaded, reference, where: str) -> None:
    """``loaded`` holds what ``reference`` holds: tensors, arrays, containers and objects' attributes."""
    if isinstance(reference, torch.Tensor):
        assert torch.equal(loaded, reference), where
    elif isinstance(reference, np.ndarray):
        assert np.array_equal(loaded, reference), where
    elif isinstance(reference, dict):
        assert loaded.keys() == reference.keys(), where
        for key in reference:
            assert_same_content(loaded[key], reference[key], f"{where}/{key}")
    elif isinstance(reference, (list, tuple)):
        assert type(loaded) is type(reference) and len(loaded) == len(reference), where
        for index, (a, b) in enumerate(zip(loaded, reference, strict=True)):
            assert_same_content(a, b, f"{where}[{index}]")
    elif hasattr(reference, "__dict__") and not isinstance(reference, type):
        assert type(loaded) is type(reference), where
        assert_same_content(vars(loaded), vars(reference), where)
    else:
        assert loaded == reference, where


def test_every_file_of_a_real_checkpoint_loads_weights_only_and_unchanged(trained, universal_root):
    files = [*trained.rglob("*.pt"), *universal_root.rglob("*.pt")]
    assert len(files) > 10
    for path in files:
        reference = torch.load(path, map_location="cpu", weights_only=False)  # DeepSpeed's own way
        assert_same_content(load_checkpoint_file(path, map_location="cpu"), reference, str(path))


def test_foreign_pickle_code_in_model_states_is_refused_unless_trusted(trained, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    poisoned = poisoned_copy(trained, tmp_path / "poisoned", "mp_rank_00_model_states.pt", marker)
    assert checkpoint_main(["inspect", str(poisoned)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refused to unpickle posix.mkdir" in err and "--trust_checkpoint" in err
    assert not marker.exists()
    corpus = write_corpus(tmp_path / "corpus.jsonl", lines=50)
    assert pretrain_ds.main(["--resume_from", str(poisoned), "--data_path", str(corpus), "--save_dir",
                             str(tmp_path / "run"), "--hidden_size", "64", "--num_hidden_layers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pretrain_ds.py: error: ") and "refused to unpickle" in err and err.count("\n") == 0
    assert not marker.exists()
    assert checkpoint_main(["inspect", str(poisoned), "--trust_checkpoint"]) == 0
    assert marker.is_dir()  # the payload is real: trusted, it runs


def test_deepspeed_own_loaders_are_refused_foreign_pickle_code(trained, tmp_path):
    marker = tmp_path / "code_ran"
    poisoned = poisoned_copy(trained, tmp_path / "poisoned", "zero_pp_rank_1_mp_rank_00_optim_states.pt", marker)
    with checkpoint_loading(), pytest.raises(CheckpointError, match="optim_states.pt: refused to unpickle"):
        get_fp32_state_dict_from_zero_checkpoint(str(poisoned))
    assert not marker.exists()
    assert torch.load is torch.serialization.load  # put back after the block
