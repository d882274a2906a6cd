"""Record upstream MiniMind's own model outputs as test fixtures (``tests/upstream/*.safetensors``).

Upstream's ``model/model_minimind.py`` is read at a given commit from a git clone or mirror of
``jingyaogong/minimind`` (``git show COMMIT:model/model_minimind.py``) into a temporary module. For
every case in ``CASES`` it builds upstream's ``MiniMindForCausalLM``, sets seeded random weights
(values exact in float16, so that the fixture stores them at half the size and loses nothing),
runs random token ids through it in float32 in training and in evaluation mode, and saves

- ``state.*``: the state dict (float16), every key upstream's model has;
- ``input_ids``, ``logits.train``, ``logits.eval``, ``aux_loss.train``, ``aux_loss.eval``;
- metadata: the commit, our ``model_family`` and the config arguments (JSON).

``tests/test_model_upstream.py`` checks our model against them. Regenerate them (``transformers``
must be installed; the commits are those the project follows) with::

    python -m tests.upstream.make_reference --repo /path/to/minimind.git
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parent
MINIMIND2_COMMIT = "e119db8"  # the minimind2 release this project followed first
MINIMIND3_COMMIT = "d65ef2c"  # upstream's main with the minimind-3 architecture (since 101d7df)
VOCAB = 128
BATCH, SEQ = 2, 8

# name -> (commit, our model_family, upstream's config arguments); widths kept small for small files.
CASES = {
    "minimind3_dense": (MINIMIND3_COMMIT, "minimind3", {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}),
    "minimind3_dense_gqa3_untied_yarn": (MINIMIND3_COMMIT, "minimind3", {
        "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 6, "num_key_value_heads": 2,
        "intermediate_size": 40, "tie_word_embeddings": False, "inference_rope_scaling": True,
        "max_position_embeddings": 4096}),
    "minimind3_dense_head_dim": (MINIMIND3_COMMIT, "minimind3", {
        "hidden_size": 40, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 12, "intermediate_size": 56}),
    "minimind3_moe": (MINIMIND3_COMMIT, "minimind3", {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "use_moe": True, "moe_intermediate_size": 32}),
    "minimind3_moe_top2_unnormalized": (MINIMIND3_COMMIT, "minimind3", {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 24, "use_moe": True, "num_experts": 5, "num_experts_per_tok": 2, "norm_topk_prob": False,
        "moe_intermediate_size": 24, "router_aux_loss_coef": 0.01, "tie_word_embeddings": False}),
    "minimind2_dense": (MINIMIND2_COMMIT, "minimind2", {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}),
    "minimind2_moe_seq_aux": (MINIMIND2_COMMIT, "minimind2", {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "use_moe": True, "intermediate_size": 32}),
    "minimind2_moe_token_aux_top1": (MINIMIND2_COMMIT, "minimind2", {
        "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 6, "num_key_value_heads": 3,
        "use_moe": True, "intermediate_size": 24, "num_experts_per_tok": 1, "n_shared_experts": 2,
        "seq_aux": False}),
}


def load_upstream(repo: Path, commit: str, folder: Path, file: str = "model/model_minimind.py"):
    """Upstream's ``file`` (a module of its repository) at ``commit``, imported as a fresh module."""
    source = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{file}"],
                            check=True, capture_output=True, text=True).stdout
    path = folder / f"{Path(file).stem}_{commit}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights of realistic scale, rounded to float16 values: norms around 1, the rest ~ 1/sqrt(fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 1:
            value = 1.0 + 0.2 * noise
        elif "embed_tokens" in name:
            value = noise
        else:
            value = noise / param.shape[1] ** 0.5
        param.copy_(value.half().float())


def record_case(module, family: str, commit: str, kwargs: dict, seed: int) -> tuple[dict, dict]:
    """Upstream's tensors and metadata of one case."""
    torch.manual_seed(seed)
    model = module.MiniMindForCausalLM(module.MiniMindConfig(vocab_size=VOCAB, **kwargs)).float()
    randomize(model, seed)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed + 1))
    tensors = {f"state.{key}": value.half().contiguous() for key, value in model.state_dict().items()}
    tensors["input_ids"] = input_ids
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.no_grad():
            output = model(input_ids)
        tensors[f"logits.{mode}"] = output.logits.float().contiguous()
        tensors[f"aux_loss.{mode}"] = torch.as_tensor(output.aux_loss, dtype=torch.float32).reshape(())
    metadata = {"commit": commit, "model_family": family, "config": json.dumps({"vocab_size": VOCAB, **kwargs})}
    return tensors, metadata


def main() -> None:
    """Write every case's fixture file from the clone given by ``--repo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="git clone or mirror of jingyaogong/minimind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        modules = {}
        for seed, (name, (commit, family, kwargs)) in enumerate(CASES.items()):
            if commit not in modules:
                modules[commit] = load_upstream(args.repo, commit, Path(folder))
            tensors, metadata = record_case(modules[commit], family, commit, kwargs, seed)
            path = FIXTURES / f"{name}.safetensors"
            save_file(tensors, path, metadata=metadata)
            print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
