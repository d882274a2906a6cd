"""SFT samples: rows equal to e119db8's ``SFTDataset`` and, for minimind3 rows, d65ef2c's (fixtures from upstream's
own code), packed conversations that keep their rows' targets and attend only to themselves, and one-line errors
for bad conversations."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from minimind.data import conversations
from minimind.data.conversations import (
    PackedConversations,
    PaddedConversations,
    read_conversations,
)
from minimind.data.jsonl_reader import DataError
from minimind.data.minimind3_chat import EMPTY_THINK, SYSTEM_PROMPTS
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.loss import IGNORE_INDEX, token_cross_entropy
from minimind.model.packed_attention import block_causal_mask, packed_attention_mask, resolve_packed_attention
from minimind.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer
from tests.upstream.recorded_rows import MINIMIND3_ROWS, SFT_ROWS

MAX_SEQ_LEN = SFT_ROWS["sft_max_length"] - 1


def write_conversations(path: Path, conversations: list) -> Path:
    path.write_text("".join(json.dumps({"conversations": c}, ensure_ascii=False) + "\n" for c in conversations),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def encoded(tokenizer, tmp_path_factory):
    path = write_conversations(tmp_path_factory.mktemp("sft") / "sft.jsonl", SFT_ROWS["conversations"])
    return read_conversations(path, tokenizer, MAX_SEQ_LEN)


@pytest.fixture(scope="module")
def minimind3_file(tmp_path_factory):
    return write_conversations(tmp_path_factory.mktemp("sft3") / "sft.jsonl", MINIMIND3_ROWS["conversations"])


@pytest.fixture(scope="module")
def encoded_minimind3(tokenizer, minimind3_file):
    return read_conversations(minimind3_file, tokenizer, MINIMIND3_ROWS["sft_max_length"] - 1, "minimind3",
                              seed=MINIMIND3_ROWS["seeds"][0])


def test_padded_rows_are_minimind_e119db8s(encoded):
    samples = PaddedConversations(encoded)
    assert len(samples) == len(SFT_ROWS["sft_rows"])
    for index, (x, y, mask) in enumerate(SFT_ROWS["sft_rows"]):
        expected = torch.where(torch.tensor(mask, dtype=torch.bool), torch.tensor(y), IGNORE_INDEX)
        assert samples[index]["input_ids"].tolist() == x
        assert torch.equal(samples[index]["targets"], expected)


def test_minimind3_padded_rows_are_minimind_d65ef2cs(tokenizer, minimind3_file):
    """For each seed, conversation i's row is d65ef2c's ``SFTDataset`` row read with Python's ``random`` in the
    state of ``conversation_random(seed, i)``: the same random choices, the same text, ids and labels."""
    for seed, rows in zip(MINIMIND3_ROWS["seeds"], MINIMIND3_ROWS["sft_rows"], strict=True):
        max_seq_len = MINIMIND3_ROWS["sft_max_length"] - 1
        samples = PaddedConversations(read_conversations(minimind3_file, tokenizer, max_seq_len, "minimind3",
                                                         seed=seed))
        assert len(samples) == len(rows)
        for index, (ids, labels) in enumerate(rows):
            assert samples[index]["input_ids"].tolist() == ids[:-1]
            assert samples[index]["targets"].tolist() == labels[1:]  # upstream's model shifts its labels


def test_minimind3_fixture_makes_each_random_choice_both_ways(tokenizer):
    """Some recorded rows have a random system prompt and some not; some keep their empty think blocks and some
    lost them: the rows above checked both outcomes of both draws."""
    texts = [tokenizer.decode(ids) for rows in MINIMIND3_ROWS["sft_rows"] for ids, _ in rows]
    with_system = {any(prompt in text for prompt in SYSTEM_PROMPTS) for text in texts}
    with_empty_think = {EMPTY_THINK in text for text in texts}
    assert with_system == with_empty_think == {True, False}


def test_minimind3_rows_render_with_the_familys_template_not_the_tokenizers(tokenizer, minimind3_file, tmp_path,
                                                                            encoded_minimind3):
    """minimind3 rows use d65ef2c's template whatever the tokenizer carries, so a tokenizer without one will do."""
    shutil.copytree(DEFAULT_TOKENIZER_DIR, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    bare = read_conversations(minimind3_file, load_tokenizer(tmp_path), MINIMIND3_ROWS["sft_max_length"] - 1,
                              "minimind3", seed=MINIMIND3_ROWS["seeds"][0])
    assert np.array_equal(bare.tokens, encoded_minimind3.tokens)
    assert np.array_equal(bare.offsets, encoded_minimind3.offsets)


def test_rows_of_an_unknown_family_are_refused(tokenizer, minimind3_file):
    with pytest.raises(ValueError, match="rows must be one of minimind2, minimind3"):
        read_conversations(minimind3_file, tokenizer, MAX_SEQ_LEN, "minimind4")


def test_conversations_tokenized_in_chunks_are_the_same(encoded, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(conversations, "ENCODE_CHUNK", 2)
    chunked = read_conversations(write_conversations(tmp_path / "sft.jsonl", SFT_ROWS["conversations"]), tokenizer,
                                 MAX_SEQ_LEN)
    assert np.array_equal(chunked.tokens, encoded.tokens) and np.array_equal(chunked.offsets, encoded.offsets)
    assert chunked.num_cut == encoded.num_cut


def test_a_conversation_longer_than_the_window_is_cut_and_counted(encoded):
    lengths = [len(encoded.ids(index)) for index in range(len(encoded))]
    assert encoded.num_cut == 1 and lengths.count(MAX_SEQ_LEN + 1) == 1


@pytest.mark.parametrize("rows", ["encoded", "encoded_minimind3"])
def test_packed_conversations_keep_their_rows_targets(rows, request):
    encoded = request.getfixturevalue(rows)
    padded, packed = PaddedConversations(encoded), PackedConversations(encoded)
    seen = []
    for window in packed:
        assert all(window[key].shape == (encoded.max_length - 1,) for key in window)
        for segment in range(int(window["segment_ids"].max()) + 1):
            span = window["segment_ids"] == segment
            index = len(seen)
            taken = len(encoded.ids(index)) - 1
            assert int(span.sum()) == taken
            assert window["position_ids"][span].tolist() == list(range(taken))
            assert torch.equal(window["input_ids"][span], padded[index]["input_ids"][:taken])
            assert torch.equal(window["targets"][span], padded[index]["targets"][:taken])
            assert (padded[index]["targets"][taken:] == IGNORE_INDEX).all()  # the row's padding has no targets
            seen.append(index)
        padding = window["segment_ids"] == -1
        assert (window["targets"][padding] == IGNORE_INDEX).all()
    assert seen == list(range(len(encoded)))
    assert len(packed) < len(padded)


def test_packing_fills_windows_in_order_without_splitting(tokenizer, tmp_path):
    chats = [[{"role": "user", "content": "q" * n}, {"role": "assistant", "content": "a"}] for n in range(6)]
    encoded = read_conversations(write_conversations(tmp_path / "a.jsonl", chats), tokenizer, 40)
    taken = [len(encoded.ids(index)) - 1 for index in range(len(encoded))]
    windows = [window["segment_ids"].max().item() + 1 for window in PackedConversations(encoded)]
    used = 0
    expected = [0]
    for size in taken:
        if used + size > 40:
            expected.append(0)
            used = 0
        used += size
        expected[-1] += 1
    assert windows == expected and sum(windows) == len(chats)


def test_block_causal_mask():
    segments = torch.tensor([[0, 0, 1, 1, 1, -1]])
    allowed = block_causal_mask(segments)
    assert allowed.shape == (1, 1, 6, 6)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for block in ([0, 1], [2, 3, 4], [5]):
        for query in block:
            for key in block:
                expected[query, key] = key <= query
    assert torch.equal(allowed[0, 0], expected)


@pytest.mark.parametrize("config, attention", [
    ({"model_family": "minimind2"}, "mask"),
    ({"model_family": "minimind2", "flash_attn": False}, "mask"),  # the eager attention
    ({"model_family": "minimind3", "use_moe": True}, "mask"),
    ({"model_family": "minimind2"}, "flex"),
    ({"model_family": "minimind3", "use_moe": True}, "flex"),
], ids=["minimind2-sdpa", "minimind2-eager", "minimind3-moe", "minimind2-flex", "minimind3-moe-flex"])
def test_each_packed_conversation_has_the_loss_it_has_alone(encoded, config, attention):
    """The model on a packed window (``packed_positions`` restarting per conversation, the block-diagonal mask
    dense or FlexAttention's block mask): each conversation's summed loss equals the model's own loss on its
    padded row alone; with the window's plain positions and causal attention it does not."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, max_position_embeddings=512, **config)).eval()
    padded, packed = PaddedConversations(encoded), PackedConversations(encoded)
    window = packed[0]
    assert window["segment_ids"].max() > 0
    inputs = {key: value[None] for key, value in window.items()}
    with torch.no_grad():
        logits = model(inputs["input_ids"], attention_mask=packed_attention_mask(inputs["segment_ids"], attention),
                       packed_positions=inputs["position_ids"]).logits
        causal = model(inputs["input_ids"]).logits
        for segment in range(int(window["segment_ids"].max()) + 1):
            span = window["segment_ids"] == segment
            alone = padded[segment]
            expected = token_cross_entropy(model(alone["input_ids"][None]).logits, alone["targets"][None], "sum")
            found = token_cross_entropy(logits[0, span], window["targets"][span], "sum")
            torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)  # fp32, other kernels' rounding
            if segment > 0:
                assert not torch.allclose(token_cross_entropy(causal[0, span], window["targets"][span], "sum"),
                                          expected, rtol=1e-5, atol=1e-5)


def test_one_sequence_packed_is_the_plain_forward(encoded):
    """A window holding one sequence from position 0 (positions 0..L-1, the causal mask as a block mask) gives
    the plain forward's logits: the packed path changes nothing else."""
    torch.manual_seed(1)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, max_position_embeddings=512)).eval()
    ids = torch.randint(3, 6400, (2, 24))
    with torch.no_grad():
        plain = model(ids).logits
        packed = model(ids, attention_mask=block_causal_mask(torch.zeros_like(ids)),
                       packed_positions=torch.arange(24).expand(2, 24)).logits
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("line, message", [
    ('{"conversations": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"conversations": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
     "turn 1 has role 'bot'"),
    ('{"conversations": [{"role": "user"}, {"role": "assistant", "content": "x"}]}', 'no "content" string'),
    ('{"conversations": []}', "non-empty list"),
    ('{"text": "pretraining"}', "non-empty list"),
    ('{"conversations": [{"role": "user", "content": "hi", "functions": []}, '
     '{"role": "assistant", "content": "x"}]}', "first system turn"),
    ("[1, 2]", "expected an object"),
    ("{not json", "not valid JSON"),
])
def test_bad_conversations_are_one_line_errors_naming_file_and_line(tokenizer, tmp_path, line, message):
    good = json.dumps({"conversations": SFT_ROWS["conversations"][0]})
    path = tmp_path / "sft.jsonl"
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match="no assistant|role|content|non-empty|first system|object|JSON") as info:
        read_conversations(path, tokenizer, MAX_SEQ_LEN)
    assert str(info.value).startswith(f"{path}:3: ") and message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("turn, message", [
    ({"role": "system", "content": "x", "functions": []}, '"functions", the minimind2 rows\' tools'),
    ({"role": "user", "content": "x", "tools": "[]"}, '"tools" belongs to a system turn, not a user one'),
    ({"role": "system", "content": "x", "tools": "[{"}, '"tools" is not a list or the JSON text of one'),
    ({"role": "system", "content": "x", "tools": {"name": "f"}}, '"tools" is not a list or the JSON text of one'),
    ({"role": "assistant", "content": "x", "tool_calls": '{"name": "f"}'}, '"tool_calls" is not a list'),
    ({"role": "assistant", "content": "x", "reasoning_content": 5}, '"reasoning_content" is not a string'),
])
def test_bad_minimind3_fields_are_one_line_errors(tokenizer, tmp_path, turn, message):
    path = write_conversations(tmp_path / "sft.jsonl", [MINIMIND3_ROWS["conversations"][0],
                                                        [turn, {"role": "assistant", "content": "y"}]])
    with pytest.raises(DataError) as info:
        read_conversations(path, tokenizer, MAX_SEQ_LEN, "minimind3")
    assert str(info.value).startswith(f"{path}:2: \"conversations\" turn 1") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_empty_file_is_an_error(tokenizer, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no conversations"):
        read_conversations(path, tokenizer, MAX_SEQ_LEN)


def test_a_window_needs_a_position(tokenizer, tmp_path):
    path = write_conversations(tmp_path / "sft.jsonl", SFT_ROWS["conversations"][:1])
    with pytest.raises(ValueError, match="max_seq_len at least 1"):
        read_conversations(path, tokenizer, 0)


def flex_and_mask_runs(encoded, device: torch.device, dtype: torch.dtype) -> dict:
    """Two packed windows through FlexAttention's block mask and through the dense mask on ``device``: each way's
    logits and, off the CPU (FlexAttention has no backward there), its parameter gradients."""
    torch.manual_seed(1)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, max_position_embeddings=512)).to(device, dtype)
    packed = PackedConversations(encoded)
    batch = {key: torch.stack([packed[0][key], packed[1][key]]).to(device) for key in packed[0]}
    results = {}
    for attention in ("mask", "flex"):
        model.zero_grad()
        with torch.set_grad_enabled(device.type != "cpu"):
            logits = model(batch["input_ids"], attention_mask=packed_attention_mask(batch["segment_ids"], attention),
                           packed_positions=batch["position_ids"]).logits
        if device.type != "cpu":
            token_cross_entropy(logits, batch["targets"], "sum").backward()
        results[attention] = logits.detach().float(), {name: p.grad.float().clone() for name, p in
                                                       model.named_parameters() if p.grad is not None}
    return results


def test_flex_attention_gives_the_masks_logits(encoded):
    results = flex_and_mask_runs(encoded, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(results["flex"][0], results["mask"][0], rtol=1e-5, atol=1e-5)


def test_compiled_flex_attention_gives_the_masks_logits_and_gradients_on_cuda(encoded, cuda_device, monkeypatch):
    """The compiled FlexAttention kernel against SDPA with the dense mask, fp32 on the GPU (TF32 off)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    results = flex_and_mask_runs(encoded, cuda_device, torch.float32)
    torch.testing.assert_close(results["flex"][0], results["mask"][0], rtol=1e-4, atol=1e-4)
    assert results["mask"][1] and results["flex"][1].keys() == results["mask"][1].keys()
    for name, grad in results["mask"][1].items():
        torch.testing.assert_close(results["flex"][1][name], grad, rtol=1e-3, atol=1e-4)


def test_auto_packed_attention_is_flex_on_cuda_only():
    assert resolve_packed_attention("auto", torch.device("cuda")) == "flex"
    assert resolve_packed_attention("auto", torch.device("cpu")) == "mask"
    assert resolve_packed_attention("flex", torch.device("cpu")) == "flex"

