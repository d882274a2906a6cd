"""The decode loop (``minimind.model.generation``) against a full-recompute greedy decode, its sampling
and forward counts, the chat prompts, and ``python -m minimind.generate`` on every kind of model path and bad
input, continuing a prompt or chatting (``--chat``) against greedy decodes of the chat template's ids.

Every model is tiny (hidden 48-64, 2 layers) and every checkpoint is built in the test: a
universal tag (per-parameter files, client state, manifest) is written directly, so no DeepSpeed
engine runs.
"""

import copy
import io
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.checkpoint.export import export_hf
from minimind.checkpoint.locate import MODEL_STATES
from minimind.checkpoint.manifest import manifest_of_folder
from minimind.generate import TextStream
from minimind.generate import main as generate_main
from minimind.model.generation import (
    chat_history_that_fits,
    chat_prompt_ids,
    generate_tokens,
    prompt_token_ids,
    sample_next_token,
)
from minimind.model.pth_weights import save_minimind_pth
from minimind.tokenizer.loader import DEFAULT_TOKENIZER_DIR, EOS_ID, load_tokenizer, tokenizer_fingerprint
from tests.model_reference import greedy_full_recompute
from tests.test_model_components import tiny_config

CPU = torch.device("cpu")
PROMPT_TEXT = "The small model reads"
NEW_TOKENS = 12


def decisive(config: MiniMindConfig, seed: int) -> MiniMindForCausalLM:
    """A model in eval mode whose greedy choices depend on the context and are far from ties: weights drawn
    wide (at the default 0.02 a tiny model repeats its last token) and the final norm scaled up."""
    torch.manual_seed(seed)
    config.initializer_range = 0.5
    model = MiniMindForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.mul_(10)
    return model.eval()


class EngineLike:
    """Like a DeepSpeed engine: calls go to ``module`` (counted, input lengths recorded), and its own
    ``config`` is DeepSpeed's, not the model's."""

    def __init__(self, module):
        self.module = module
        self.config = {"train_micro_batch_size_per_gpu": 1}
        self.input_lengths: list[int] = []

    def __call__(self, **kwargs):
        self.input_lengths.append(kwargs["input_ids"].shape[1])
        return self.module(**kwargs)


class ScriptedModel:
    """A stand-in model whose logits at call i make ``script[i]`` the argmax; checks the cache it is handed."""

    def __init__(self, script: list[int], vocab: int = 10, max_positions: int = 64):
        self.script = script
        self.vocab = vocab
        self.config = SimpleNamespace(max_position_embeddings=max_positions)
        self.calls: list[tuple[list[int], object]] = []  # (input ids, cache given)

    def __call__(self, input_ids, cache, use_cache, logits_to_keep):
        assert use_cache and logits_to_keep == 1
        assert cache == (None if not self.calls else f"cache {len(self.calls) - 1}")  # the one it returned
        self.calls.append((input_ids[0].tolist(), cache))
        logits = torch.zeros(1, 1, self.vocab, dtype=torch.bfloat16)
        logits[0, 0, self.script[min(len(self.calls) - 1, len(self.script) - 1)]] = 1
        return SimpleNamespace(logits=logits, cache=f"cache {len(self.calls) - 1}")


@pytest.mark.parametrize("use_moe", [False, True])
@pytest.mark.parametrize("prompt_length", [1, 7, 33])
def test_greedy_with_kv_cache_equals_full_recompute(use_moe, prompt_length):
    model = decisive(tiny_config(num_hidden_layers=2, use_moe=use_moe), seed=prompt_length)
    prompt = torch.randint(3, 97, (prompt_length,)).tolist()
    expected = greedy_full_recompute(model, prompt, 20)
    assert len(set(expected)) > 5  # not a model that repeats one token: the cache matters
    assert generate_tokens(model, prompt, 20, device=CPU, stop_at_eos=False) == expected
    eos = expected[5]  # a real stop: the first time the model emits this id
    assert generate_tokens(model, prompt, 20, device=CPU, eos_token_id=eos) == expected[:expected.index(eos) + 1]


def test_one_forward_per_new_token_after_a_prefill():
    model = EngineLike(decisive(tiny_config(num_hidden_layers=2), seed=0))
    new = generate_tokens(model, [1, 5, 9], 9, device=CPU, eos_token_id=None, stop_at_eos=False)
    assert len(new) == 9 and model.input_lengths == [3] + [1] * 8


def test_stop_at_eos_false_runs_every_forward_and_true_stops_after_eos():
    seen = []
    lockstep = ScriptedModel([5, EOS_ID, 7])
    new = generate_tokens(lockstep, [1, 4], 6, device=CPU, eos_token_id=EOS_ID, stop_at_eos=False, on_token=seen.append)
    assert new == [5, EOS_ID, 7, 7, 7, 7] and seen == new
    assert [ids for ids, _ in lockstep.calls] == [[1, 4], [5], [EOS_ID], [7], [7], [7]]  # each forward: the last token
    stopping = ScriptedModel([5, EOS_ID, 7])
    assert generate_tokens(stopping, [1, 4], 6, device=CPU, eos_token_id=EOS_ID) == [5, EOS_ID]
    assert len(stopping.calls) == 2
    never = ScriptedModel([5, EOS_ID, 7])  # no eos id given: nothing stops it
    assert generate_tokens(never, [1, 4], 4, device=CPU) == [5, EOS_ID, 7, 7]


def test_new_tokens_are_clamped_to_max_position_embeddings():
    model = ScriptedModel([3], max_positions=16)
    assert generate_tokens(model, list(range(10)), 20, device=CPU, stop_at_eos=False) == [3] * 6
    assert len(model.calls) == 6  # prompt + new tokens = 16 positions
    full = ScriptedModel([3], max_positions=16)
    assert generate_tokens(full, list(range(16)), 5, device=CPU, stop_at_eos=False) == [] and not full.calls
    with pytest.raises(ValueError, match="17 tokens exceeds max_position_embeddings 16"):
        generate_tokens(ScriptedModel([3], max_positions=16), list(range(17)), 5, device=CPU)
    torch.manual_seed(1)
    engine = EngineLike(MiniMindForCausalLM(tiny_config(num_hidden_layers=2, max_position_embeddings=12)).eval())
    assert len(generate_tokens(engine, [1, 2, 3, 4, 5], 50, device=CPU, stop_at_eos=False)) == 7
    assert engine.input_lengths == [5] + [1] * 6


def test_seeded_sampling_is_reproducible_and_top_k_1_or_tiny_top_p_is_greedy():
    model = decisive(tiny_config(num_hidden_layers=2), seed=3)
    prompt = [1, 40, 41, 42]

    def sample(seed: int, **settings) -> list[int]:
        return generate_tokens(model, prompt, 15, device=CPU, generator=torch.Generator().manual_seed(seed),
                               stop_at_eos=False, **settings)

    assert sample(7, temperature=1.0) == sample(7, temperature=1.0)
    assert len({tuple(sample(seed, temperature=2.0)) for seed in range(4)}) > 1  # the seed matters
    greedy = generate_tokens(model, prompt, 15, device=CPU, stop_at_eos=False)
    assert sample(8, temperature=1.5, top_k=1) == greedy
    assert sample(9, temperature=1.5, top_p=1e-6) == greedy


def test_sampling_draws_from_the_filtered_distribution():
    """Temperature, then top-k, then top-p, against the distribution written out by hand."""
    probs = torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1])
    logits = probs.log()
    # temperature 0.5 squares the probabilities: .0025 .16 .09 .0225 .01; top_k 3 keeps ids 1, 2, 3;
    # renormalised .16/.2725 = .587, .09/.2725 = .330, .083; top_p 0.8 keeps ids 1 and 2 (.587 < .8 <= .917)
    expected = {1: 0.16 / 0.25, 2: 0.09 / 0.25}
    generator = torch.Generator().manual_seed(0)
    draws = Counter(int(sample_next_token(logits, 0.5, 3, 0.8, generator)) for _ in range(4000))
    assert set(draws) == set(expected)
    for token, p in expected.items():
        assert abs(draws[token] / 4000 - p) < 0.03, (token, draws)
    assert int(sample_next_token(logits)) == 1


def test_sampling_math_runs_in_fp32_whatever_the_logits_dtype():
    # In fp16, 60000 / 0.01 overflows to inf and the softmax to NaN; in fp32 the larger logit wins.
    logits = torch.tensor([59000.0, 60000.0, 0.0], dtype=torch.float16)
    generator = torch.Generator().manual_seed(0)
    assert {int(sample_next_token(logits, 0.01, 0, 1.0, generator)) for _ in range(20)} == {1}


def test_prompt_ids_start_like_a_pretraining_document():
    tokenizer = load_tokenizer()
    text = "Hello 你好, world"
    ids = prompt_token_ids(tokenizer, text)
    assert ids == [tokenizer.bos_token_id, *tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids]
    assert EOS_ID not in ids


class RecordedWrites(io.StringIO):
    """A text stream that keeps each write apart."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_streamed_text_holds_back_a_character_until_its_last_byte():
    tokenizer = load_tokenizer()
    text = "你好 world, 世界"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode(ids[:end]) for end in range(len(ids)))  # bytes split across tokens
    out = RecordedWrites()
    stream = TextStream(tokenizer, out)
    for token_id in [*ids, EOS_ID]:
        stream.add(token_id)
    stream.finish()
    assert out.getvalue() == text + "\n" and not any("\ufffd" in chunk for chunk in out.writes)
    assert len(out.writes) > 3  # written as it came, not at the end


# --- python -m minimind.generate ---------------------------------------------------------------------------


def cli_model(seed: int, **overrides) -> MiniMindForCausalLM:
    """A tiny model with the shipped tokenizer's vocabulary (MiniMind's defaults but the sizes)."""
    config = MiniMindConfig(**{"hidden_size": 64, "num_hidden_layers": 2, "kernel_impl": "torch", **overrides})
    return decisive(config, seed)


def expected_output(model, tokenizer, prompt_text: str = PROMPT_TEXT, new_tokens: int = NEW_TOKENS) -> str:
    """What the command prints for a greedy decode: the prompt, the reference continuation, a newline."""
    new = greedy_full_recompute(model, prompt_token_ids(tokenizer, prompt_text), new_tokens, eos=EOS_ID)
    assert len(set(new)) > 3
    return prompt_text + tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False) + "\n"


def run_generate(path: Path, capsys, *flags: str, prompt: str = PROMPT_TEXT) -> tuple[int, str, str]:
    """The command on ``path`` with ``flags``, on CPU (in fp32, as ``expected_output`` decodes) unless a
    flag names the device: on a GPU node it would otherwise run on cuda in bf16. Status, stdout, stderr."""
    status = generate_main([str(path), "--prompt", prompt, "--temperature", "0", "--max_new_tokens",
                            str(NEW_TOKENS), "--device", "cpu", *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip()


def write_universal_tag(save_dir: Path, model: MiniMindForCausalLM, client_state: dict, step: int = 3) -> Path:
    """A universal checkpoint tag as ``ds_to_universal`` lays it out (``zero/{name}/fp32.pt``, the model-states
    file with the run's client state), with its manifest, under ``save_dir/checkpoints`` with ``latest``."""
    tag_dir = save_dir / "checkpoints" / f"step_{step}"
    for name, parameter in model.named_parameters():  # the tied lm_head comes once, as the embedding
        (tag_dir / "zero" / name).mkdir(parents=True)
        torch.save({"param": parameter.detach().clone()}, tag_dir / "zero" / name / "fp32.pt")
    torch.save({"model_config": model.config.to_dict(), "global_steps": step, **client_state}, tag_dir / MODEL_STATES)
    manifest_of_folder(tag_dir, world_size=1)
    (tag_dir.parent / "latest").write_text(tag_dir.name)
    return tag_dir


@pytest.fixture(scope="module")
def extended_tokenizer(tmp_path_factory) -> Path:
    """The shipped tokenizer with one added token, saved to a folder: another fingerprint, the same layout."""
    folder = tmp_path_factory.mktemp("extended_tokenizer")
    tokenizer = load_tokenizer()
    tokenizer.add_tokens(["generate-test-token"])
    tokenizer.save_pretrained(folder)
    return folder


def test_pth_with_config_json_beside_it(tmp_path, capsys):
    model = cli_model(0, use_moe=True, max_position_embeddings=256)
    save_minimind_pth(model, tmp_path / "pretrain_64_moe.pth", torch.float32)
    model.config.save_pretrained(tmp_path)
    status, out, err = run_generate(tmp_path / "pretrain_64_moe.pth", capsys)
    assert status == 0, err
    assert out == expected_output(model, load_tokenizer())


def test_a_model_trained_with_triton_kernels_generates_on_a_cpu_without_triton(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = cli_model(4, kernel_impl="triton")
    write_universal_tag(tmp_path, model, {"tokenizer_fingerprint": tokenizer_fingerprint(load_tokenizer())})
    status, out, err = run_generate(tmp_path, capsys, "--device", "cpu")
    assert status == 0, err
    model.select_kernels("torch")
    assert out == expected_output(model, load_tokenizer())


def test_pth_sized_by_flags_and_prompt_from_stdin(tmp_path, capsys, monkeypatch):
    model = cli_model(1)
    save_minimind_pth(model, tmp_path / "pretrain_64.pth", torch.float32)
    status, out, err = run_generate(tmp_path / "pretrain_64.pth", capsys, "--hidden_size", "64",
                                    "--num_hidden_layers", "2")
    assert status == 0, err
    assert out == expected_output(model, load_tokenizer())
    assert "fp32 on cpu" in err and "tokens/s" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon a time\n"))
    status, out, err = run_generate(tmp_path / "pretrain_64.pth", capsys, "--hidden_size", "64",
                                    "--num_hidden_layers", "2", prompt="-")
    assert status == 0, err
    assert out == expected_output(model, load_tokenizer(), "Once upon a time")


def test_minimind3_pth_sized_by_flags(tmp_path, capsys):
    model = cli_model(3, model_family="minimind3", use_moe=True)
    save_minimind_pth(model, tmp_path / "pretrain_64_moe.pth", torch.float32)
    status, out, err = run_generate(tmp_path / "pretrain_64_moe.pth", capsys, "--model_family", "minimind3",
                                    "--hidden_size", "64", "--num_hidden_layers", "2", "--use_moe", "1")
    assert status == 0, err
    assert out == expected_output(model, load_tokenizer())
    err = one_line_error(capsys, [str(tmp_path / "pretrain_64_moe.pth"), "--prompt", "x", "--hidden_size", "64",
                                  "--num_hidden_layers", "2", "--use_moe", "1"])
    assert "keys do not match" in err and "--model_family minimind2 --hidden_size 64" in err


def test_hugging_face_export_folder(tmp_path, capsys):
    model = cli_model(2)
    export_hf(copy.deepcopy(model), tmp_path / "hf", torch.float32, tokenizer_path=None)
    status, out, err = run_generate(tmp_path / "hf", capsys)
    assert status == 0, err
    assert out == expected_output(model, load_tokenizer())
    assert f"tokenizer: {tmp_path / 'hf'}" in err  # the folder's own tokenizer files
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    err = one_line_error(capsys, [str(tmp_path / "hf"), "--prompt", "x"])  # loaded strictly
    assert "weights do not fit its config.json: model.layers.0.mlp.down_proj.weight has shape (64, 192), " \
           "the config makes (64, 64)" in err


@pytest.mark.parametrize("which", ["save folder", "checkpoint folder", "tag"])
def test_checkpoint_uses_the_tokenizer_it_recorded(which, tmp_path, capsys, extended_tokenizer):
    tokenizer = load_tokenizer(extended_tokenizer)
    model = cli_model(3, vocab_size=len(tokenizer))  # as training sizes it: max(len(tokenizer), 6400)
    tag_dir = write_universal_tag(tmp_path / "run", model, {"args": {"tokenizer_path": str(extended_tokenizer)},
                                                            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)})
    path = {"save folder": tmp_path / "run", "checkpoint folder": tag_dir.parent, "tag": tag_dir}[which]
    status, out, err = run_generate(path, capsys)
    assert status == 0, err
    assert out == expected_output(model, tokenizer)
    assert f"{tag_dir}: " in err and f"tokenizer: {extended_tokenizer}" in err


def test_a_tokenizer_other_than_the_checkpoints_is_refused_naming_both(tmp_path, capsys, extended_tokenizer):
    model = cli_model(4)
    shipped = tokenizer_fingerprint(load_tokenizer())
    write_universal_tag(tmp_path / "run", model, {"args": {"tokenizer_path": None}, "tokenizer_fingerprint": shipped})
    status, out, err = run_generate(tmp_path / "run", capsys, "--tokenizer_path", str(extended_tokenizer))
    assert status == 2 and out == "" and err.count("\n") == 0, err
    found = tokenizer_fingerprint(load_tokenizer(extended_tokenizer))
    assert str(extended_tokenizer) in err and found[:12] in err
    assert "the shipped default" in err and shipped[:12] in err
    status, out, err = run_generate(tmp_path / "run", capsys, "--tokenizer_path", str(DEFAULT_TOKENIZER_DIR))
    assert status == 0, err  # the same tokenizer by its path: accepted
    gone = tmp_path / "moved_tokenizer"
    write_universal_tag(tmp_path / "run2", model, {"args": {"tokenizer_path": str(gone)},
                                                   "tokenizer_fingerprint": shipped})
    err = one_line_error(capsys, [str(tmp_path / "run2"), "--prompt", "x"])
    assert f"trained with the tokenizer in {gone}, which is not there" in err and "--tokenizer_path" in err


def one_line_error(capsys, argv: list[str]) -> str:
    """The command's stderr for ``argv``, after checking it failed with status 2 in one line and printed nothing."""
    status = generate_main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert status == 2 and captured.out == "" and err.startswith("error: ") and err.count("\n") == 0, err
    return err


def test_bad_input_is_one_line_with_status_2(tmp_path, capsys, monkeypatch):
    model = cli_model(5, max_position_embeddings=8)
    save_minimind_pth(model, tmp_path / "w.pth", torch.float32)
    (tmp_path / "empty").mkdir()
    assert "no such file or folder" in one_line_error(capsys, [str(tmp_path / "absent"), "--prompt", "x"])
    err = one_line_error(capsys, [str(tmp_path / "empty"), "--prompt", "x"])
    assert "not a model" in err and ".pth" in err and "checkpoint" in err
    assert "the prompt is empty" in one_line_error(capsys, [str(tmp_path / "w.pth"), "--prompt", ""])
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert "nothing on stdin" in one_line_error(capsys, [str(tmp_path / "w.pth"), "--prompt", "-"])
    assert "--top_p" in one_line_error(capsys, [str(tmp_path / "w.pth"), "--prompt", "x", "--top_p", "1.5"])
    assert "--frobnicate" in one_line_error(capsys, [str(tmp_path / "w.pth"), "--prompt", "x", "--frobnicate"])
    err = one_line_error(capsys, [str(tmp_path / "w.pth"), "--prompt", "x"])  # MiniMind's 512 x 8 by default
    assert "w.pth: keys do not match" in err and "--hidden_size 512 --num_hidden_layers 8" in err
    err = one_line_error(capsys, [str(tmp_path / "w.pth"), "--prompt", "x", "--hidden_size", "32",
                                  "--num_hidden_layers", "2"])
    assert "w.pth: model.embed_tokens.weight has shape (6400, 64)" in err
    model.config.save_pretrained(tmp_path)  # now sized by config.json: max_position_embeddings 8
    err = one_line_error(capsys, [str(tmp_path / "w.pth"), "--prompt", "one two three four five six seven"])
    assert "max_position_embeddings) is 8" in err
    assert "drop the size flags" in one_line_error(capsys, [str(tmp_path / "w.pth"), "--prompt", "x",
                                                            "--hidden_size", "64"])


def test_the_command_imports_deepspeed_only_for_checkpoints(tmp_path):
    model = cli_model(6)
    save_minimind_pth(model, tmp_path / "w.pth", torch.float32)
    export_hf(copy.deepcopy(model), tmp_path / "hf", torch.float32, tokenizer_path=None)
    check = ("import sys; from minimind.generate import main; "
             f"assert main([{str(tmp_path / 'w.pth')!r}, '--prompt', 'x', '--hidden_size', '64', "
             "'--num_hidden_layers', '2', '--max_new_tokens', '2']) == 0; "
             f"assert main([{str(tmp_path / 'hf')!r}, '--prompt', 'x', '--max_new_tokens', '2']) == 0; "
             "assert 'deepspeed' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]


# --- python -m minimind.generate --chat ----------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "Answer in one line."}


def user(text: str) -> dict:
    """A user turn."""
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    """An assistant turn."""
    return {"role": "assistant", "content": text}


def chat_reference(model, tokenizer, messages: list[dict]) -> str:
    """The greedy answer to ``messages``: transformers' own rendering and tokenizing of the chat template, then
    the full-recompute greedy decode up to eos, as text."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    new = greedy_full_recompute(model, ids, NEW_TOKENS, eos=EOS_ID)
    assert len(set(new)) > 3
    return tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def run_chat(path: Path, capsys, *flags: str) -> tuple[int, str, str]:
    """``--chat`` on ``path`` with ``flags``, greedy on CPU as ``chat_reference`` decodes. Status, stdout, stderr."""
    status = generate_main([str(path), "--chat", "--temperature", "0", "--max_new_tokens", str(NEW_TOKENS),
                            "--device", "cpu", *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip()


def saved_chat_model(folder: Path, seed: int, **overrides) -> tuple[MiniMindForCausalLM, Path]:
    """A tiny model saved in ``folder`` as a ``.pth`` with its ``config.json`` beside it."""
    model = cli_model(seed, **overrides)
    save_minimind_pth(model, folder / "full_sft_64.pth", torch.float32)
    model.config.save_pretrained(folder)
    return model, folder / "full_sft_64.pth"


@pytest.fixture(scope="module")
def chat_pth(tmp_path_factory) -> tuple[MiniMindForCausalLM, Path]:
    """The chat tests' model and its ``.pth``."""
    return saved_chat_model(tmp_path_factory.mktemp("chat"), seed=7)


class TerminalInput(io.StringIO):
    """Lines to read that say they come from a terminal."""

    def isatty(self) -> bool:
        return True


def test_chat_prompt_ids_are_the_template_with_the_assistant_turn_opened():
    tokenizer = load_tokenizer()
    for messages in ([user("Hi")], [SYSTEM, user("Hi"), assistant("Hello."), user("你好?")]):
        ids = chat_prompt_ids(tokenizer, messages)
        assert ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        text = tokenizer.decode(ids)
        assert text.endswith(f"<|im_start|>user\n{messages[-1]['content']}<|im_end|>\n<|im_start|>assistant\n")
        assert text.count("<|im_start|>") == len(messages) + (messages[0] != SYSTEM) + 1  # default system, opened


def test_chat_history_drops_the_oldest_exchanges_only_as_far_as_needed():
    tokenizer = load_tokenizer()
    turns = [user("one two three four five"), assistant("six seven"), user("eight nine"), assistant("ten"),
             user("eleven")]

    def length(messages: list[dict]) -> int:
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))

    for system in ([], [SYSTEM]):
        everything, last_two, last = system + turns, system + turns[2:], system + turns[4:]
        for max_positions, kept in [(length(everything) + 5, everything), (length(everything) + 4, last_two),
                                    (length(last_two) + 5, last_two), (length(last_two) + 4, last),
                                    (3, last)]:  # the last turn stays even when it alone is too long
            messages, prompt = chat_history_that_fits(tokenizer, everything, max_positions, 5)
            assert messages == kept and prompt == chat_prompt_ids(tokenizer, kept), (system, max_positions)


def test_chat_answer_is_the_greedy_decode_of_the_templates_ids(chat_pth, capsys):
    model, path = chat_pth
    tokenizer = load_tokenizer()
    status, out, err = run_chat(path, capsys, "--prompt", "Hi there")
    assert status == 0, err
    assert out == chat_reference(model, tokenizer, [user("Hi there")]) + "\n"
    assert "> " not in err and "tokens/s" in err


def test_chat_system_turn_comes_first(chat_pth, capsys):
    model, path = chat_pth
    tokenizer = load_tokenizer()
    status, out, err = run_chat(path, capsys, "--system", SYSTEM["content"], "--prompt", "Hi there")
    assert status == 0, err
    assert out == chat_reference(model, tokenizer, [SYSTEM, user("Hi there")]) + "\n"
    assert out != chat_reference(model, tokenizer, [user("Hi there")]) + "\n"  # the system turn mattered


def test_chat_from_stdin_keeps_the_conversation(chat_pth, capsys, monkeypatch):
    model, path = chat_pth
    tokenizer = load_tokenizer()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\nWhat comes next?\n\nnot read: after the empty line\n"))
    status, out, err = run_chat(path, capsys, "--system", SYSTEM["content"])
    assert status == 0, err
    first = chat_reference(model, tokenizer, [SYSTEM, user("Hi there")])
    second = chat_reference(model, tokenizer, [SYSTEM, user("Hi there"), assistant(first), user("What comes next?")])
    assert out == f"{first}\n{second}\n"
    assert second != chat_reference(model, tokenizer, [SYSTEM, user("What comes next?")])  # the history mattered
    assert "> " not in err and err.count("tokens/s") == 2
    monkeypatch.setattr(sys, "stdin", TerminalInput("Hi there\n"))  # a terminal: prompted on stderr, to its end
    status, out, err = run_chat(path, capsys, "--system", SYSTEM["content"])
    assert status == 0 and out == f"{first}\n", err
    lines = err.splitlines()
    assert lines[1].startswith("> ") and lines[2] == ">", err  # one prompt per read: the turn, then the end


def test_chat_drops_the_oldest_turns_and_refuses_a_turn_too_long_alone(tmp_path, capsys, monkeypatch):
    tokenizer = load_tokenizer()
    long_turn, short_turn = "Tell me a long story about a small model that reads many books", "And then?"
    # the first turn and its answer fill the context exactly; the second turn needs the first exchange gone
    max_positions = len(chat_prompt_ids(tokenizer, [user(long_turn)])) + NEW_TOKENS
    model, path = saved_chat_model(tmp_path, seed=8, max_position_embeddings=max_positions)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{long_turn}\n{short_turn}\n"))
    status, out, err = run_chat(path, capsys)
    assert status == 0, err
    assert out == f"{chat_reference(model, tokenizer, [user(long_turn)])}\n" \
                  f"{chat_reference(model, tokenizer, [user(short_turn)])}\n"
    assert "note: dropped the 2 oldest turns" in err and f"context of {max_positions} positions" in err
    assert "note: at most" not in err  # each prompt left room for --max_new_tokens
    too_long = " ".join(["books"] * max_positions)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{too_long}\n{short_turn}\n"))
    status, out, err = run_chat(path, capsys)
    assert status == 2 and out == f"{chat_reference(model, tokenizer, [user(short_turn)])}\n"  # it went on
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: the turn takes {len(chat_prompt_ids(tokenizer, [user(too_long)]))} tokens in the chat template, "
        f"and the model's context (max_position_embeddings) is {max_positions}: shorten it"]
    assert "the turn takes" in one_line_error(capsys, [str(path), "--chat", "--prompt", too_long])


def test_chat_samples_with_the_sampling_flags(chat_pth, capsys):
    model, path = chat_pth
    tokenizer = load_tokenizer()
    settings = {"temperature": 1.5, "top_k": 50, "top_p": 0.95}
    flags = [f"--{name}={value}" for name, value in settings.items()]
    status, out, err = run_chat(path, capsys, "--prompt", "Hi there", *flags, "--seed", "5")
    assert status == 0, err
    new = generate_tokens(model, chat_prompt_ids(tokenizer, [user("Hi there")]), NEW_TOKENS, device=CPU,
                          generator=torch.Generator().manual_seed(5), eos_token_id=EOS_ID, **settings)
    assert out == tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False) + "\n"
    assert out != chat_reference(model, tokenizer, [user("Hi there")]) + "\n"  # sampled, not greedy


def test_chat_flags_and_a_tokenizer_without_a_chat_template_are_one_line_errors(chat_pth, tmp_path, capsys):
    _, path = chat_pth
    assert "--prompt is required (or --chat" in one_line_error(capsys, [str(path)])
    assert "--system applies only with --chat" in one_line_error(capsys, [str(path), "--prompt", "x",
                                                                          "--system", "y"])
    shutil.copytree(DEFAULT_TOKENIZER_DIR, tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "plain" / "tokenizer_config.json").write_text(json.dumps(config))
    for prompt in (["--prompt", "Hi"], []):
        err = one_line_error(capsys, [str(path), "--chat", "--tokenizer_path", str(tmp_path / "plain"), *prompt])
        assert f"{tmp_path / 'plain'}: no chat_template" in err
