"""Validation data and loss: held-out documents, their token stream, the dealing of eval windows to
ranks, and the loss against a float64 computation written here."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.data import (
    PackedWindows,
    PaddedDocuments,
    data_sources,
    document_stream,
    split_documents,
    token_cache_location,
)
from minimind.data.pipeline import DataSettings, load_samples
from minimind.errors import ConfigError
from minimind.tokenizer.loader import load_tokenizer
from minimind.training.evaluation.samples import ChatStyle, SampleGenerator, read_sample_prompts
from minimind.training.evaluation.validation_loss import eval_batch_count, evaluate, rank_sample_indices
from minimind.training.loop.objective import TOKEN_LOSS
from tests.plain_engine import PlainEngine
from tests.project_tree import REPO_ROOT
from tests.test_data_windows import synthetic_cache


@pytest.mark.parametrize(("num_documents", "fraction"), [(2, 0.5), (17, 0.1), (1000, 0.01), (997, 0.37)])
def test_held_out_documents_are_a_fixed_disjoint_share(num_documents, fraction):
    split = split_documents(num_documents, fraction)
    assert len(split.held_out) == max(1, round(fraction * num_documents))
    assert np.intersect1d(split.train, split.held_out).size == 0
    assert sorted(np.concatenate([split.train, split.held_out]).tolist()) == list(range(num_documents))
    again = split_documents(num_documents, fraction)  # no rank, world or seed enters the choice
    assert np.array_equal(again.held_out, split.held_out) and np.array_equal(again.train, split.train)


def test_holding_out_every_document_is_refused():
    with pytest.raises(ValueError, match="leaves none to train on"):
        split_documents(1, 0.5)


def test_document_stream_reads_as_the_concatenated_documents():
    rng = np.random.default_rng(1)
    tokens, offsets = synthetic_cache(rng.integers(0, 50, 40).tolist(), seed=2)
    split = split_documents(40, 0.3)
    for documents in (split.train, split.held_out):
        stream = document_stream(tokens, offsets, documents)
        expected = np.concatenate([tokens[offsets[d]:offsets[d + 1]] for d in documents])
        assert len(stream) == len(expected)
        assert np.array_equal(stream[0:len(stream)], expected)
        for _ in range(200):
            start, stop = sorted(rng.integers(0, len(expected) + 3, 2).tolist())
            assert np.array_equal(stream[start:stop], expected[start:stop])
        for max_seq_len in (1, 7, 33):  # windows over the stream are windows over a copy of it
            packed, copied = PackedWindows(stream, max_seq_len), PackedWindows(expected, max_seq_len)
            assert len(packed) == len(copied) and packed.num_label_tokens == copied.num_label_tokens
            for index in range(len(packed)):
                assert all(torch.equal(packed[index][k], copied[index][k]) for k in ("input_ids", "targets"))


def test_padded_documents_serve_only_the_chosen_documents():
    tokens, offsets = synthetic_cache([3, 9, 0, 30, 4], seed=3)
    chosen = np.array([1, 3, 4])
    subset, whole = PaddedDocuments(tokens, offsets, 8, documents=chosen), PaddedDocuments(tokens, offsets, 8)
    assert len(subset) == 3
    for position, document in enumerate(chosen):
        assert torch.equal(subset[position]["input_ids"], whole[int(document)]["input_ids"])
    assert subset.num_label_tokens == sum(min(offsets[d + 1] - offsets[d], 9) - 1 for d in chosen)


@pytest.mark.parametrize("num_windows", [1, 5, 12, 13])
@pytest.mark.parametrize(("world", "micro_batch"), [(1, 1), (1, 4), (2, 3), (3, 2)])
def test_every_window_is_evaluated_once_by_ranks_running_equal_passes(num_windows, world, micro_batch):
    batches = eval_batch_count(num_windows, micro_batch, world, max_batches=0)
    seen = [index for rank in range(world) for batch in range(batches)
            for index in rank_sample_indices(batch, micro_batch, world, rank, num_windows) if index is not None]
    assert sorted(seen) == list(range(num_windows))
    assert eval_batch_count(num_windows, micro_batch, world, max_batches=1) == 1


def reference_val_loss(model: MiniMindForCausalLM, windows: PackedWindows) -> tuple[float, int]:
    """Mean float64 cross-entropy over every target of every window, one window at a time."""
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for index in range(len(windows)):
            sample = windows[index]
            logits = model(input_ids=sample["input_ids"][None]).logits[0].double()
            keep = sample["targets"] != -100
            loss_sum += F.cross_entropy(logits[keep], sample["targets"][keep], reduction="sum").item()
            count += int(keep.sum())
    return loss_sum / count, count


@pytest.mark.parametrize("micro_batch", [1, 3])
def test_val_loss_is_the_mean_over_every_target_token(micro_batch):
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=300, kernel_impl="torch", dropout=0.2)
    model = MiniMindForCausalLM(config)
    tokens, _ = synthetic_cache([20, 3, 41, 7], seed=4)
    windows = PackedWindows(tokens % 300, 11)  # 4 windows, the last one partial
    expected, count = reference_val_loss(model.eval(), windows)
    model.train()  # evaluate switches dropout off itself, and back on after
    rng_before = torch.get_rng_state()
    result = evaluate(PlainEngine(model), windows, TOKEN_LOSS, micro_batch=micro_batch, max_batches=0, rank=0, world=1,
                      device=torch.device("cpu"))
    assert model.training and torch.equal(torch.get_rng_state(), rng_before)
    assert result.eval_tokens == count == windows.num_label_tokens
    assert result.val_loss == pytest.approx(expected, rel=1e-5)  # fp32 model against float64 sums
    assert result.val_ppl == pytest.approx(math.exp(expected), rel=1e-5)


class RandomDrawingEngine(PlainEngine):
    """An engine whose forward draws from torch's RNG even in eval mode (as a sampling router might)."""

    def __call__(self, **inputs):
        torch.rand(3)
        return super().__call__(**inputs)


def test_evaluation_leaves_the_rng_streams_where_they_were():
    torch.manual_seed(1)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                               num_key_value_heads=2, vocab_size=300, kernel_impl="torch"))
    windows = PackedWindows(np.arange(3, 50) % 300, 7)
    before = torch.get_rng_state()
    evaluate(RandomDrawingEngine(model), windows, TOKEN_LOSS, micro_batch=2, max_batches=0, rank=0, world=1,
             device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)


def window_tokens(samples) -> list[int]:
    """The real tokens of every sample in order: each one's first input, then its unmasked targets."""
    tokens = []
    for index in range(len(samples)):
        sample = samples[index]
        tokens += [int(sample["input_ids"][0]), *sample["targets"][sample["targets"] != -100].tolist()]
    return tokens


def contains(stream: list[int], part: list[int]) -> bool:
    """Whether ``part`` occurs contiguously in ``stream``."""
    return f",{','.join(map(str, part))}," in f",{','.join(map(str, stream))},"


@pytest.mark.parametrize("packing", [1, 0])
def test_the_run_trains_on_none_of_the_held_out_documents(packing, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMIND_CACHE_DIR", str(tmp_path / "cache"))
    texts = [f"document number {index} says {' '.join(['word'] * (index % 7))} end {index}" for index in range(60)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    tokenizer = load_tokenizer()
    settings = DataSettings(sources=tuple(data_sources([str(corpus)])), max_seq_len=16, packing=bool(packing),
                            eval_fraction=0.1, eval_data_path=None, skip_bad_lines=False, text_field="text",
                            mixture_exhaust="repeat", seed=1, tokenize_workers=1)
    samples, eval_windows = load_samples(settings, tokenizer, (token_cache_location(corpus, tokenizer),), None,
                                         local_rank=0, log=print)
    held_out = set(split_documents(len(texts), 0.1).held_out.tolist())
    documents = [[tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
                 for text in texts]
    assert window_tokens(eval_windows) == [token for index in sorted(held_out) for token in documents[index]]
    if packing:
        trained = window_tokens(samples)
        assert all(contains(trained, document) != (index in held_out) for index, document in enumerate(documents))
    else:
        trained = [window_tokens([samples[row]]) for row in range(len(samples))]  # one document a row
        assert trained == [documents[index] for index in range(len(texts)) if index not in held_out]


def test_sample_prompts_are_read_once_each_and_must_leave_room_to_continue(tmp_path):
    tokenizer = load_tokenizer()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\n  second one  \nfirst prompt\n")
    assert read_sample_prompts(str(prompts), tokenizer, max_positions=64) == ["first prompt", "second one"]
    assert read_sample_prompts("none", tokenizer, max_positions=64) == []
    assert len(read_sample_prompts("default", tokenizer, max_positions=64)) == 3
    prompts.write_text("short\n" + "word " * 40 + "\n")
    with pytest.raises(ConfigError, match=rf"--sample_prompts {prompts}:2: the prompt is \d+ tokens, the model "
                                          "holds 32 positions"):
        read_sample_prompts(str(prompts), tokenizer, max_positions=32)


@pytest.mark.parametrize("family, template_file", [
    ("minimind2", "minimind/tokenizer/default/tokenizer_config.json"),
    ("minimind3", "minimind/tokenizer/chat_templates/minimind3.jinja"),
])
def test_a_fine_tuning_stages_samples_ask_in_its_familys_chat_template(family, template_file, tokenizer):
    """Chat samples put each prompt as a user turn with the assistant's turn opened, in the template of the
    model's family read from its file here (the shipped tokenizer's config for minimind2, today's MiniMind
    template for minimind3), and decode only what the model adds."""
    path = REPO_ROOT / template_file
    template = (json.loads(path.read_text(encoding="utf-8"))["chat_template"] if path.suffix == ".json"
                else path.read_text(encoding="utf-8"))
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                               num_key_value_heads=2, model_family=family))
    generator = SampleGenerator(PlainEngine(model), tokenizer, ["Who are you?"], 3, torch.device("cpu"),
                                ChatStyle(family))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], tokenize=False,
                                         add_generation_prompt=True, chat_template=template)
    assert generator.prompts == [("Who are you?", tokenizer(text).input_ids)]
    assert text.endswith("<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if family == "minimind3" else ""))
    assert [row["prompt"] for row in generator.generate()] == ["Who are you?"]
