"""Native Hugging Face exports: minimind3 as Qwen3 / Qwen3-MoE, minimind2 dense as Llama, loaded by transformers'
own classes (no ``trust_remote_code``) with our logits and our greedy tokens; the custom code where none is exact."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minimind.checkpoint import CheckpointError
from minimind.checkpoint.__main__ import main as checkpoint_main
from minimind.checkpoint.export import export_hf
from minimind.checkpoint.hf_architecture import choose_hf_architecture
from minimind.generate import load_hf_folder, load_model
from minimind.generate import parse_args as parse_generate_args
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.generation import generate_tokens, prompt_token_ids
from minimind.tokenizer.chat_templates import family_chat_template
from minimind.tokenizer.loader import EOS_ID, load_tokenizer
from tests.launcher import FP32_CONFIG, TINY_MODEL, main_in_process, write_corpus
from tests.test_generate import decisive

SMALL = {"hidden_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 6400, "max_position_embeddings": 64, "kernel_impl": "torch"}
# (built-in class, the config's overrides): awkward sizes, untied embeddings, one KV head, top-2 of 3 experts, YaRN
NATIVE_CASES = [
    ("Qwen3ForCausalLM", {"model_family": "minimind3"}),
    ("Qwen3ForCausalLM", {"model_family": "minimind3", "head_dim": 14, "num_key_value_heads": 1,
                          "intermediate_size": 72, "tie_word_embeddings": False}),
    ("Qwen3MoeForCausalLM", {"model_family": "minimind3", "use_moe": True}),
    ("Qwen3MoeForCausalLM", {"model_family": "minimind3", "use_moe": True, "num_experts": 3, "num_experts_per_tok": 2,
                             "moe_intermediate_size": 24, "head_dim": 6, "tie_word_embeddings": False}),
    ("Qwen3MoeForCausalLM", {"model_family": "minimind3", "use_moe": True, "num_experts_per_tok": 2,
                             "norm_topk_prob": False, "num_hidden_layers": 3}),
    ("LlamaForCausalLM", {}),
    ("LlamaForCausalLM", {"hidden_size": 48, "num_attention_heads": 6, "tie_word_embeddings": False}),
    ("LlamaForCausalLM", {"inference_rope_scaling": True, "max_position_embeddings": 4096}),  # YaRN on
]
IDS = torch.tensor([[1, 45, 300, 77, 1200, 9, 3000, 12, 5], [1, 7, 8, 9, 10, 11, 12, 13, 14]])


def random_model(seed: int, **overrides) -> MiniMindForCausalLM:
    """A small model of ``SMALL`` sizes and ``overrides``, random weights, eval mode."""
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(**{**SMALL, **overrides})).eval()


@pytest.mark.parametrize("class_name, overrides", NATIVE_CASES)
def test_native_export_loads_with_auto_classes_and_gives_our_logits(class_name, overrides, tmp_path):
    model = random_model(len(overrides), **overrides)
    with torch.no_grad():
        expected = model(IDS).logits
    exported = export_hf(model, tmp_path / "hf", torch.float32, None)
    assert exported.architecture.native and exported.architecture.class_name == class_name
    assert exported.architecture.describe().startswith(f"wrote {class_name} (built-in, no trust_remote_code)")
    config = json.loads((exported.path / "config.json").read_text())
    assert config["architectures"] == [class_name] and "auto_map" not in config
    assert config["model_family"] == model.config.model_family
    assert not (exported.path / "modeling_minimind.py").exists()

    loaded = AutoModelForCausalLM.from_pretrained(exported.path).eval()  # no trust_remote_code
    assert type(loaded).__name__ == class_name
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, expected, rtol=1e-5, atol=1e-5)  # fp32
        # python -m minimind.generate loads it back into this project's model
        torch.testing.assert_close(load_hf_folder(exported.path, None).model(IDS).logits, expected,
                                   rtol=1e-5, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(exported.path)
    assert tokenizer("hello world")["input_ids"] == load_tokenizer()("hello world")["input_ids"]


@pytest.mark.parametrize("use_moe", [False, True])
def test_greedy_generation_of_a_minimind3_export_equals_ours(use_moe, tmp_path):
    config = MiniMindConfig(**{**SMALL, "model_family": "minimind3", "use_moe": use_moe, "num_experts_per_tok": 2})
    model = decisive(config, seed=5)
    tokenizer = load_tokenizer()
    prompt = prompt_token_ids(tokenizer, "The small model reads")
    ours = generate_tokens(model, prompt, 8, device=torch.device("cpu"), eos_token_id=EOS_ID)
    assert len(set(ours)) > 3  # not a degenerate repetition
    folder = export_hf(model, tmp_path / "hf", torch.float32, None).path
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    theirs = loaded.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    assert theirs[0, len(prompt):].tolist() == ours


@pytest.mark.parametrize("family", ["minimind2", "minimind3"])
def test_an_exports_tokenizer_renders_conversations_in_its_familys_chat_template(family, tmp_path):
    """transformers' own ``apply_chat_template`` on the export renders a conversation as the model's family was
    fine-tuned on it: the shipped tokenizer's template (e119db8's) for minimind2, today's MiniMind template
    (think blocks, no default system turn) for minimind3."""
    model = MiniMindForCausalLM(MiniMindConfig(**{**SMALL, "model_family": family}))
    folder = export_hf(model, tmp_path / "hf", torch.float32, None).path
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    expected = load_tokenizer().apply_chat_template(turns, tokenize=False, chat_template=family_chat_template(family))
    assert AutoTokenizer.from_pretrained(folder).apply_chat_template(turns, tokenize=False) == expected
    assert ("<think>" in expected) == (family == "minimind3")


def test_minimind2_moe_and_inexact_yarn_keep_the_custom_code(tmp_path):
    moe = random_model(1, use_moe=True)
    exported = export_hf(moe, tmp_path / "moe", torch.float32, None)
    assert not exported.architecture.native
    assert exported.architecture.describe() == ("wrote custom MiniMind code (load with trust_remote_code=True): "
                                                "minimind2 MoE has shared experts, no built-in architecture has them")
    assert json.loads((exported.path / "config.json").read_text())["model_type"] == "minimind"
    assert (exported.path / "modeling_minimind.py").is_file()
    # theta below original / (2 pi): MiniMind bounds YaRN's ramp by head_dim / 2 - 1, transformers by head_dim - 1
    yarn = MiniMindConfig(**{**SMALL, "model_family": "minimind3", "inference_rope_scaling": True,
                             "max_position_embeddings": 4096, "rope_theta": 100.0})
    assert "yarn RoPE gives other frequencies" in choose_hf_architecture(yarn).reason
    with pytest.raises(CheckpointError, match="^--hf_arch native: minimind2 MoE has shared experts"):
        choose_hf_architecture(moe.config, "native")
    forced = choose_hf_architecture(MiniMindConfig(**SMALL), "custom")
    assert not forced.native and forced.reason == "asked for with --hf_arch custom"


@pytest.mark.parametrize("use_moe", ["0", "1"])
def test_a_minimind3_run_exports_natively_and_generates_as_minimind_generate(use_moe, tmp_path, capsys):
    """A minimind3 run here (dense, MoE), its checkpoint exported with the command: the folder is Qwen3's
    built-in architecture, and plain transformers' greedy continuation equals ``python -m minimind.generate``'s on
    the same checkpoint (its model and tokenizer as the command loads them)."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", lines=200)
    out = tmp_path / "out"
    main_in_process([*TINY_MODEL, "--model_family", "minimind3", "--use_moe", use_moe, "--data_path", str(corpus),
                     "--batch_size", "4", "--max_steps", "3", "--learning_rate", "3e-3", "--deepspeed_config",
                     str(FP32_CONFIG), "--save_dir", str(out)], env={"MINIMIND_CACHE_DIR": str(tmp_path / "cache")})
    tag = out / "checkpoints" / "step_3"
    assert checkpoint_main(["export", str(tag), str(tmp_path / "hf"), "--format", "hf"]) == 0
    expected = "Qwen3MoeForCausalLM" if use_moe == "1" else "Qwen3ForCausalLM"
    assert f"wrote {expected} (built-in, no trust_remote_code)" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [expected] and "auto_map" not in config
    loaded = load_model(parse_generate_args([str(tag), "--prompt", "x"]))
    prompt = prompt_token_ids(loaded.tokenizer, "Return the number of")
    ours = generate_tokens(loaded.model.eval(), prompt, 8, device=torch.device("cpu"),
                           eos_token_id=loaded.tokenizer.eos_token_id)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    theirs = exported.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
    if loaded.tokenizer.eos_token_id in theirs:  # transformers pads after the end; ours stops there
        theirs = theirs[:theirs.index(loaded.tokenizer.eos_token_id) + 1]
    assert theirs == ours
