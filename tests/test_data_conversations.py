"""SFT samples: rows equal to e119db8's ``SFTDataset`` (fixture from upstream's own code), packed conversations
that keep their rows' targets and attend only to themselves, and one-line errors for bad conversations."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minimind.data import conversations
from minimind.data.conversations import (
    PackedConversations,
    PaddedConversations,
    block_causal_mask,
    read_conversations,
)
from minimind.data.jsonl_reader import DataError
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.loss import IGNORE_INDEX, token_cross_entropy
from minimind.tokenizer import load_tokenizer

FIXTURE = json.loads((Path(__file__).resolve().parent / "upstream" / "sft_rows.json").read_text(encoding="utf-8"))
MAX_SEQ_LEN = FIXTURE["sft_max_length"] - 1


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def write_conversations(path: Path, conversations: list) -> Path:
    path.write_text("".join(json.dumps({"conversations": c}, ensure_ascii=False) + "\n" for c in conversations),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def encoded(tokenizer, tmp_path_factory):
    path = write_conversations(tmp_path_factory.mktemp("sft") / "sft.jsonl", FIXTURE["conversations"])
    return read_conversations(path, tokenizer, MAX_SEQ_LEN)


def test_padded_rows_are_minimind_e119db8s(encoded):
    samples = PaddedConversations(encoded)
    assert len(samples) == len(FIXTURE["sft_rows"])
    for index, (x, y, mask) in enumerate(FIXTURE["sft_rows"]):
        expected = torch.where(torch.tensor(mask, dtype=torch.bool), torch.tensor(y), IGNORE_INDEX)
        assert samples[index]["input_ids"].tolist() == x
        assert torch.equal(samples[index]["targets"], expected)


def test_conversations_tokenized_in_chunks_are_the_same(encoded, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(conversations, "ENCODE_CHUNK", 2)
    chunked = read_conversations(write_conversations(tmp_path / "sft.jsonl", FIXTURE["conversations"]), tokenizer,
                                 MAX_SEQ_LEN)
    assert np.array_equal(chunked.tokens, encoded.tokens) and np.array_equal(chunked.offsets, encoded.offsets)
    assert chunked.num_cut == encoded.num_cut


def test_a_conversation_longer_than_the_window_is_cut_and_counted(encoded):
    lengths = [len(encoded.ids(index)) for index in range(len(encoded))]
    assert encoded.num_cut == 1 and lengths.count(MAX_SEQ_LEN + 1) == 1


def test_packed_conversations_keep_their_rows_targets(encoded):
    padded, packed = PaddedConversations(encoded), PackedConversations(encoded)
    seen = []
    for window in packed:
        assert all(window[key].shape == (MAX_SEQ_LEN,) for key in window)
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


@pytest.mark.parametrize("config", [
    {"model_family": "minimind2"},
    {"model_family": "minimind2", "flash_attn": False},  # the eager attention
    {"model_family": "minimind3", "use_moe": True},
], ids=["minimind2-sdpa", "minimind2-eager", "minimind3-moe"])
def test_each_packed_conversation_has_the_loss_it_has_alone(encoded, config):
    """The model on a packed window (``packed_positions`` restarting per conversation, the block-diagonal mask):
    each conversation's summed loss equals the model's own loss on its padded row alone; with the window's
    plain positions and causal attention it does not."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, max_position_embeddings=512, **config)).eval()
    padded, packed = PaddedConversations(encoded), PackedConversations(encoded)
    window = packed[0]
    assert window["segment_ids"].max() > 0
    inputs = {key: value[None] for key, value in window.items()}
    with torch.no_grad():
        logits = model(inputs["input_ids"], attention_mask=block_causal_mask(inputs["segment_ids"]),
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
    good = json.dumps({"conversations": FIXTURE["conversations"][0]})
    path = tmp_path / "sft.jsonl"
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match="no assistant|role|content|non-empty|first system|object|JSON") as info:
        read_conversations(path, tokenizer, MAX_SEQ_LEN)
    assert str(info.value).startswith(f"{path}:3: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_empty_file_is_an_error(tokenizer, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no conversations"):
        read_conversations(path, tokenizer, MAX_SEQ_LEN)


def test_a_window_needs_a_position(tokenizer, tmp_path):
    path = write_conversations(tmp_path / "sft.jsonl", FIXTURE["conversations"][:1])
    with pytest.raises(ValueError, match="max_seq_len at least 1"):
        read_conversations(path, tokenizer, 0)
