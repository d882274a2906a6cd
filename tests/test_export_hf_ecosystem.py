"""The Hugging Face export used as a new user would: transformers' auto classes, ``pipeline`` and
``generate`` in a process that cannot import this repository, printing nothing but progress bars."""

import json
import os
import subprocess
import sys

import torch

from minimind.checkpoint.export import export_hf
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.tokenizer.loader import BOS_TOKEN, EOS_ID, EOS_TOKEN, PAD_TOKEN, load_tokenizer
from tests.model_reference import greedy_full_recompute
from tests.project_tree import WITHOUT_THE_PROJECT

TEXT = "the model reads tokens and predicts the next one while the optimizer updates weights after each step"
PROMPT, SHORT_PROMPT = "the model reads tokens and", "the optimizer"
NEW_TOKENS = 8

# Run with ``python -I`` in an empty folder, the project's import names blocked: a user without it.
USER_SCRIPT = WITHOUT_THE_PROJECT + """
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, pipeline
folder, prompt, short_prompt, new_tokens, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
generator = pipeline("text-generation", model=folder, trust_remote_code=True)
piped = generator(prompt, max_new_tokens=new_tokens, do_sample=False, return_full_text=False)[0]["generated_text"]
inputs = tokenizer(prompt, return_tensors="pt")
greedy = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
torch.manual_seed(0)
sampled = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=True, top_p=0.9, temperature=0.8)
batch = tokenizer([prompt, short_prompt], return_tensors="pt", padding=True)
batched = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
Path(out).write_text(json.dumps({
    "tokenizer": [isinstance(tokenizer, PreTrainedTokenizerFast), tokenizer.bos_token, tokenizer.eos_token,
                  tokenizer.pad_token, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
    "prompt_ids": inputs["input_ids"][0].tolist(), "piped": piped, "greedy": greedy[0].tolist(),
    "plain_prompt_ids": PreTrainedTokenizerFast.from_pretrained(folder)(prompt)["input_ids"],
    "sampled": sampled[0].tolist(), "batched": batched[:, batch["input_ids"].shape[1]:].tolist(),
}))
"""


def memorising_model(token_ids: list[int]) -> MiniMindForCausalLM:
    """A 0.5M-parameter model (the shipped tokenizer's 6400 tokens) trained until it recites ``token_ids``."""
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=6400, max_position_embeddings=128, kernel_impl="torch")
    model = MiniMindForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.tensor([token_ids])
    for _ in range(60):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    return model.eval()


def test_export_loads_and_generates_with_auto_classes_and_pipeline_silently(tmp_path):
    tokenizer = load_tokenizer()
    model = memorising_model(tokenizer(TEXT)["input_ids"])
    folder = export_hf(model, tmp_path / "hf", torch.float32, None).path  # LlamaForCausalLM
    out = tmp_path / "out.json"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1")
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    # -W default: also show the warnings Python hides by default (deprecations in the bundled code)
    result = subprocess.run(
        [sys.executable, "-I", "-W", "default", "-c", USER_SCRIPT, str(folder), PROMPT, SHORT_PROMPT,
         str(NEW_TOKENS), str(out)],
        cwd=user_dir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in (result.stdout + result.stderr).splitlines()
               if line.strip() and not line.startswith("Loading weights:")]  # the weights' progress bars
    assert printed == [], "\n".join(printed)
    found = json.loads(out.read_text())

    assert found["tokenizer"] == [True, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, 1, 2, 0]
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    assert found["prompt_ids"] == found["plain_prompt_ids"] == prompt_ids  # plain: the class itself, no remote code
    expected = greedy_full_recompute(model, prompt_ids, NEW_TOKENS, eos=EOS_ID)
    assert TEXT.startswith(PROMPT + tokenizer.decode(expected))  # it learned the text: no degenerate repetition
    assert found["greedy"] == prompt_ids + expected  # KV-cache decoding equals full recomputation
    assert found["piped"] == tokenizer.decode(expected)
    short_expected = greedy_full_recompute(model, tokenizer(SHORT_PROMPT)["input_ids"], NEW_TOKENS, eos=EOS_ID)
    assert found["batched"] == [expected, short_expected]  # the short prompt padded on the left
    sampled = found["sampled"]
    assert sampled[:len(prompt_ids)] == prompt_ids and len(prompt_ids) < len(sampled) <= len(prompt_ids) + NEW_TOKENS
    assert all(0 <= token < 6400 for token in sampled)
