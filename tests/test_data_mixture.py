"""Weighted mixtures of data sources: parsing ``path:weight``, token shares, the epoch policies, rank
invariance and resume, in process against counts taken from the samples themselves. (End to end through the
launcher: ``test_checkpoint_resume``'s resume on one rank across an epoch boundary trains on a mixture.)"""

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from minimind.data import (
    IGNORE_INDEX,
    DataError,
    MixedSamples,
    MixtureSource,
    PackedWindows,
    RankInvariantSampler,
    data_sources,
    token_cache_location,
)
from minimind.data.pipeline import DataSettings, load_samples, training_data
from minimind.model import MiniMindConfig
from minimind.tokenizer.loader import load_tokenizer
from minimind.training.checkpoints.identity import data_position_applies
from minimind.training.run.inputs import RunInputs
from tests.launcher import write_corpus

SOURCE_SPAN = 1000  # source d's tokens are ids in [d * SOURCE_SPAN, (d + 1) * SOURCE_SPAN)


def token_sources(sizes: list[int], seed: int, max_seq_len: int) -> list[PackedWindows]:
    """One PackedWindows per source over ``sizes[d]`` random tokens that name their source."""
    rng = np.random.default_rng(seed)
    return [PackedWindows(rng.integers(d * SOURCE_SPAN, (d + 1) * SOURCE_SPAN, size, dtype=np.int64), max_seq_len)
            for d, size in enumerate(sizes)]


def mixture(sizes: list[int], weights: list[float], *, exhaust: str, seed: int = 3,
            max_seq_len: int = 13) -> MixedSamples:
    samples = token_sources(sizes, seed, max_seq_len)
    return MixedSamples([MixtureSource(f"s{d}", weight, windows) for d, (weight, windows)
                         in enumerate(zip(weights, samples, strict=True))], exhaust=exhaust, seed=seed)


def source_and_window(sample: dict) -> tuple[int, tuple[int, ...]]:
    """The source a sample's tokens come from (read off the ids) and the sample's ids."""
    ids = sample["input_ids"].tolist()
    return ids[0] // SOURCE_SPAN, tuple(ids)


def target_tokens(sample: dict) -> int:
    return int((sample["targets"] != IGNORE_INDEX).sum())


@pytest.mark.parametrize("exhaust", ["repeat", "stop"])
def test_realised_token_shares_follow_the_weights_on_a_long_run(exhaust):
    weights = [0.55, 0.3, 0.15]
    mixed = mixture([20011, 3203, 977], weights, exhaust=exhaust)
    sampler = RankInvariantSampler(len(mixed), micro_batch_size=3, accumulation_steps=2, world_size=2, rank=0, seed=7)
    epochs = -(-3000 // sampler.samples_per_epoch)  # a long run: 3,000 samples or more, across epochs
    tokens = Counter()
    for epoch in range(epochs):
        mixed.set_epoch(epoch)
        for rank in range(2):
            dealt = RankInvariantSampler(len(mixed), micro_batch_size=3, accumulation_steps=2, world_size=2,
                                         rank=rank, seed=7)
            dealt.set_epoch(epoch)
            for index in dealt:
                sample = mixed[index]
                tokens[source_and_window(sample)[0]] += target_tokens(sample)
    assert epochs > 1
    total = sum(tokens.values())
    for source, weight in enumerate(weights):
        assert tokens[source] / total == pytest.approx(weight, abs=0.01), (source, tokens)
    assert mixed.token_shares() == pytest.approx(weights, abs=0.005)


def test_repeat_reads_the_largest_source_once_and_repeats_the_others_evenly():
    sizes, weights = [4007, 1301, 211], [0.5, 0.3, 0.2]
    mixed = mixture(sizes, weights, exhaust="repeat")
    windows = token_sources(sizes, 3, 13)
    so_far = Counter()
    for epoch in range(3):
        mixed.set_epoch(epoch)
        seen = Counter(source_and_window(mixed[index]) for index in range(len(mixed)))
        so_far.update(seen)
        # the source with the most tokens for its weight: every window exactly once per epoch
        largest = [count for (source, _), count in seen.items() if source == 0]
        assert set(largest) == {1} and len(largest) == len(windows[0])
        for d in (1, 2):  # the others: every window read, none twice more than another so far
            counts = [count for (source, _), count in so_far.items() if source == d]
            passes = sum(counts) / len(windows[d])
            assert passes > epoch + 1 and len(counts) == len(windows[d])
            assert set(counts) <= {int(passes), int(passes) + 1}
    assert any("repeated" in line for line in mixed.describe())
    assert [line.split(":")[1].split()[0] for line in mixed.describe_repeats()] == ["s1", "s2"]


def test_stop_ends_the_epoch_when_a_source_runs_out_and_the_others_go_on_next_epoch():
    sizes, weights = [4007, 1301, 211], [0.5, 0.3, 0.2]  # s2 runs out first
    mixed = mixture(sizes, weights, exhaust="stop")
    windows = token_sources(sizes, 3, 13)
    read = [Counter() for _ in sizes]
    epochs = 3
    for epoch in range(epochs):
        mixed.set_epoch(epoch)
        epoch_read = Counter(source_and_window(mixed[index]) for index in range(len(mixed)))
        limiting = [ids for (source, ids) in epoch_read if source == 2]
        assert len(limiting) == len(windows[2]) and set(epoch_read[(2, ids)] for ids in limiting) == {1}
        for (source, ids), count in epoch_read.items():
            read[source][ids] += count
    for d in (0, 1):  # read in part each epoch, going on where the last epoch stopped: no window twice yet
        assert mixed.passes_per_epoch()[d] * epochs <= 1
        assert set(read[d].values()) == {1} and sum(read[d].values()) == epochs * int(mixed.counts[d])


def test_one_and_two_ranks_see_the_same_samples_in_every_step_and_a_resume_reproduces_them():
    sizes, weights = [3001, 917], [0.7, 0.3]

    def global_steps(world: int, micro: int, epoch: int, start_sample: int = 0) -> list[list[tuple]]:
        mixed = mixture(sizes, weights, exhaust="repeat")
        mixed.set_epoch(epoch)
        per_rank = []
        for rank in range(world):
            sampler = RankInvariantSampler(len(mixed), micro_batch_size=micro, accumulation_steps=1,
                                           world_size=world, rank=rank, seed=11)
            sampler.set_epoch(epoch, start_sample)
            per_rank.append([source_and_window(mixed[index])[1] for index in sampler])
        step_samples = 4
        steps = len(per_rank[0]) // (step_samples // world)
        return [sorted(ids for rank in per_rank for ids in rank[s * (step_samples // world):
                                                                  (s + 1) * (step_samples // world)])
                for s in range(steps)]

    one, two = global_steps(1, 4, epoch=1), global_steps(2, 2, epoch=1)
    assert one == two and len(one) > 50
    assert global_steps(2, 2, epoch=1, start_sample=4 * 37) == two[37:]


def test_entries_with_weights_are_sources_and_bad_weights_are_one_line(tmp_path):
    for name in ("a.jsonl", "b.jsonl", "c:1.jsonl"):
        write_corpus(tmp_path / name, lines=3)
    sources = data_sources([f"{tmp_path}/a.jsonl:0.7", f"{tmp_path}/[bc]*.jsonl:.3"])
    assert [(source.files, source.weight) for source in sources] == [
        ((tmp_path / "a.jsonl",), 0.7), ((tmp_path / "b.jsonl", tmp_path / "c:1.jsonl"), 0.3)]
    unweighted = data_sources([str(tmp_path / "c:1.jsonl"), str(tmp_path / "a.jsonl")])  # a colon in a file name
    assert len(unweighted) == 1 and unweighted[0].weight is None and len(unweighted[0].files) == 2
    for entries, named in [
        ([f"{tmp_path}/a.jsonl:0"], "the weight '0' is not a positive number"),
        ([f"{tmp_path}/a.jsonl:-1"], "the weight '-1' is not a positive number"),
        ([f"{tmp_path}/a.jsonl:nan"], "the weight 'nan' is not a positive number"),
        ([f"{tmp_path}/a.jsonl:inf"], "the weight 'inf' is not a positive number"),
        ([f"{tmp_path}/a.jsonl:lots"], "the weight 'lots' is not a positive number"),
        ([f"{tmp_path}/a.jsonl:0.5", f"{tmp_path}/b.jsonl"], "b.jsonl has no weight while other entries have one"),
        ([f"{tmp_path}/*.jsonl:0.5", f"{tmp_path}/b.jsonl:0.5"], "b.jsonl is in two weighted entries"),
        ([f"{tmp_path}/v:2.jsonl"], f"{tmp_path}/v:2.jsonl: no such file or folder"),  # a colon of the path
    ]:
        with pytest.raises(DataError) as raised:
            data_sources(entries)
        assert named in str(raised.value) and "\n" not in str(raised.value)
        assert str(raised.value).startswith("--data_path: ") or "no such file" in named


def mixture_settings(entries: list[str]) -> DataSettings:
    """The data section of a run on ``entries`` (``path:weight``), 0.1 of each source held out, 24-token windows."""
    return DataSettings(sources=tuple(data_sources(entries)), max_seq_len=24, packing=True, eval_fraction=0.1,
                        eval_data_path=None, skip_bad_lines=False, text_field="text", mixture_exhaust="repeat",
                        seed=5, tokenize_workers=1)


def test_load_samples_mixes_each_sources_training_documents_and_validates_on_all_held_out(tmp_path, monkeypatch):
    """The real ``load_samples``: no held-out document of any source is trained on, and the eval windows hold
    every source's held-out documents."""
    monkeypatch.setenv("MINIMIND_CACHE_DIR", str(tmp_path / "cache"))
    web = write_corpus(tmp_path / "web.jsonl", lines=300, seed=5)
    code = write_corpus(tmp_path / "code.jsonl", lines=80, seed=6)
    tokenizer = load_tokenizer(None)
    settings = mixture_settings([f"{web}:0.8", f"{code}:0.2"])
    samples, eval_windows = load_samples(settings, tokenizer, (None, None), None, local_rank=0, log=print)
    assert isinstance(samples, MixedSamples) and settings.is_mixture and settings.data_paths == (web, code)
    assert [source.weight for source in samples.sources] == [0.8, 0.2]
    texts = [[json.loads(line)["text"] for line in path.read_text().splitlines()] for path in (web, code)]
    held_out_texts = tokenizer.decode(eval_windows.tokens[:len(eval_windows.tokens)].tolist())
    trained_texts = tokenizer.decode(np.concatenate([source.samples.tokens[:len(source.samples.tokens)]
                                                     for source in samples.sources]).tolist())
    for source_texts in texts:
        held = [text for text in source_texts if text in held_out_texts]
        assert len(held) == pytest.approx(0.1 * len(source_texts), abs=1)
        assert not any(text in trained_texts for text in held if len(text.split()) > 30)


def test_a_source_too_small_to_hold_documents_out_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMIND_CACHE_DIR", str(tmp_path / "cache"))
    web = write_corpus(tmp_path / "web.jsonl", lines=50)
    note = write_corpus(tmp_path / "note.jsonl", lines=1)
    settings = mixture_settings([f"{web}:0.9", f"{note}:0.1"])
    with pytest.raises(DataError) as raised:
        load_samples(settings, load_tokenizer(None), (None, None), None, local_rank=0, log=print)
    assert str(raised.value) == (f"--eval_fraction: {note}: holding out 0.1 of 1 documents leaves none to "
                                 "train on")


def test_a_resume_with_other_weights_policy_seed_or_text_field_restarts_the_data_position(tmp_path, capsys):
    web, code = write_corpus(tmp_path / "web.jsonl", lines=5), write_corpus(tmp_path / "code.jsonl", lines=5, seed=1)
    tokenizer = load_tokenizer(None)

    def identity(entries: list[str], **changes) -> dict:
        settings = DataSettings(**{"sources": tuple(data_sources(entries)), "packing": True, "max_seq_len": 32,
                                   "eval_fraction": None, "eval_data_path": None, "skip_bad_lines": False,
                                   "mixture_exhaust": "repeat", "seed": 1, "text_field": "text",
                                   "tokenize_workers": 1, **changes})
        inputs = RunInputs(cpu_only=True, demo=False, ds_config={}, batch=None, save_dir=tmp_path, tokenizer=tokenizer,
                           model_config=MiniMindConfig(), data=settings,
                           cache_locations=tuple(token_cache_location(path, tokenizer) for path in settings.data_paths),
                           resume_request=None, ep_size=None, fit_batch_to_corpus=False)
        return inputs.identity()

    saved = identity([f"{web}:0.7", f"{code}:0.3"])
    assert data_position_applies({"data": saved.data}, identity([f"{web}:0.7", f"{code}:0.3"]))
    for changed in (identity([f"{web}:0.6", f"{code}:0.4"]), identity([f"{web}:0.7", f"{code}:0.3"], seed=2),
                    identity([f"{web}:0.7", f"{code}:0.3"], mixture_exhaust="stop"),
                    identity([f"{web}:0.7", f"{code}:0.3"], text_field="content"), identity([str(web), str(code)])):
        assert not data_position_applies({"data": saved.data}, changed)
        assert "the data position restarts" in capsys.readouterr().out


def test_loader_workers_deal_every_epoch_of_a_mixture_as_the_rank_itself(tmp_path, monkeypatch):
    """``--num_workers``: worker processes hold copies of the mixture, yet each epoch's steps are the samples the
    rank reads itself (the epoch set on the main process reaches them)."""
    monkeypatch.setenv("MINIMIND_CACHE_DIR", str(tmp_path / "cache"))
    web = write_corpus(tmp_path / "web.jsonl", lines=120, seed=5)
    code = write_corpus(tmp_path / "code.jsonl", lines=40, seed=6)
    settings = mixture_settings([f"{web}:0.7", f"{code}:0.3"])
    samples, _ = load_samples(settings, load_tokenizer(None), (None, None), None, local_rank=0, log=print)
    steps = {}
    for workers in (0, 2):
        data = training_data(samples, replace(settings, loader_workers=workers), 4, 1, 1, 0, epochs=3,
                             max_steps=None, pin_memory=False, log=lambda line: None)
        steps[workers] = [(epoch, [batch["input_ids"] for batch in micro_batches])
                          for epoch, micro_batches in data.optimizer_steps(0, 0)]
    assert [epoch for epoch, _ in steps[2]] == [epoch for epoch, _ in steps[0]] and steps[0][-1][0] == 2
    for (_, ours), (_, theirs) in zip(steps[2], steps[0], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
