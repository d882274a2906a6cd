"""The project's own SFT and DPO data and losses, on weights made by upstream's code, equal what e119db8's
``train_full_sft.py`` and ``train_dpo.py`` compute on the same weights and conversations (fixture from upstream's
own model, datasets and trainer lines: ``tests/upstream/make_stage_losses.py``), in fp32.

The helpers here (``fixture_model``, ``write_fixture_pth``, ``sft_batch``, ``preference_batch``) are the
fixture's pieces for other tests, such as a training stage's first step from the same ``.pth``.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from minimind.data.conversations import PaddedConversations, read_conversations
from minimind.data.preferences import PreferencePairs
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.loss import IGNORE_INDEX, token_cross_entropy
from minimind.model.preference_loss import dpo_loss, sequence_log_probs, target_log_probs
from minimind.model.pth_weights import load_minimind_pth

STAGES = Path(__file__).resolve().parent / "upstream" / "stages"
RECORD = json.loads((STAGES / "stage_losses.json").read_text(encoding="utf-8"))
# fp32 on both sides with the same kernels (SDPA, log-softmax). The SFT loss differs in its last bits (upstream
# sums a per-token loss times the mask, the project sums cross_entropy over the kept targets): 2.3e-7 measured;
# the DPO figures were bit-equal on the machine that recorded them. 1e-6 leaves room for another CPU's rounding.
RTOL = 1e-6


def write_fixture_pth(name: str, path: Path) -> Path:
    """Write the fixture's weights ``name`` (``reference`` or ``policy``) as upstream's trainers write a ``.pth``:
    a float16 state dict with the tied ``lm_head.weight`` put back. Returns ``path``."""
    state = load_file(STAGES / f"{name}.safetensors")
    copy, source = RECORD["tied"]
    state[copy] = state[source].clone()
    torch.save({key: value.half() for key, value in state.items()}, path)
    return path


def fixture_model(name: str, folder: Path) -> MiniMindForCausalLM:
    """The project's float32 model at the recorded size with the fixture's weights ``name``, loaded from a ``.pth``
    written in ``folder`` by ``load_minimind_pth``, as a run's ``--from_weight`` loads it."""
    model = MiniMindForCausalLM(MiniMindConfig(model_family=RECORD["model_family"], **RECORD["config"]))
    return load_minimind_pth(model, write_fixture_pth(name, folder / f"{name}.pth"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def sft_batch(folder: Path, tokenizer: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    """The recorded conversations as one batch of ``PaddedConversations`` rows at the recorded length (upstream's
    max_length is max_seq_len + 1 here): ``input_ids`` and ``targets``, each (conversations, max_seq_len)."""
    path = write_jsonl(folder / "sft.jsonl", [{"conversations": turns} for turns in RECORD["sft"]["conversations"]])
    samples = PaddedConversations(read_conversations(path, tokenizer, RECORD["sft"]["max_length"] - 1))
    rows = [samples[index] for index in range(len(samples))]
    return {key: torch.stack([row[key] for row in rows]) for key in ("input_ids", "targets")}


def preference_batch(folder: Path, tokenizer: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    """The recorded pairs as one batch of ``PreferencePairs`` samples at the recorded length: ``chosen_input_ids``,
    ``chosen_targets``, ``rejected_input_ids``, ``rejected_targets``, each (pairs, max_seq_len)."""
    pairs = PreferencePairs(write_jsonl(folder / "dpo.jsonl", RECORD["dpo"]["pairs"]), tokenizer,
                            RECORD["dpo"]["max_length"] - 1)
    samples = [pairs[index] for index in range(len(pairs))]
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


def upstream_targets(y: list[int], mask: list[int]) -> list[int]:
    """Upstream's Y where its loss mask is set, else IGNORE_INDEX: the project's ``targets``."""
    return [token if keep else IGNORE_INDEX for token, keep in zip(y, mask, strict=True)]


def test_fixture_weights_load_as_upstream_made_them(tmp_path):
    model = fixture_model("policy", tmp_path)
    state = load_file(STAGES / "policy.safetensors")
    assert all(torch.equal(model.state_dict()[key], value.float()) for key, value in state.items())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_rows_are_upstreams(tmp_path, tokenizer):
    sft = sft_batch(tmp_path, tokenizer)
    assert sft["input_ids"].tolist() == [x for x, _, _ in RECORD["sft"]["rows"]]
    assert sft["targets"].tolist() == [upstream_targets(y, mask) for _, y, mask in RECORD["sft"]["rows"]]
    pairs = preference_batch(tmp_path, tokenizer)
    for side in ("chosen", "rejected"):
        assert pairs[f"{side}_input_ids"].tolist() == [row[f"x_{side}"] for row in RECORD["dpo"]["rows"]]
        assert pairs[f"{side}_targets"].tolist() == [upstream_targets(row[f"y_{side}"], row[f"mask_{side}"])
                                                    for row in RECORD["dpo"]["rows"]]


def test_sft_loss_is_upstreams(tmp_path, tokenizer):
    """Mean cross-entropy over the batch's targets plus the aux loss, the model in training mode: e119db8's
    ``(loss * loss_mask).sum() / loss_mask.sum() + res.aux_loss``."""
    model = fixture_model(RECORD["sft"]["weights"], tmp_path).train()
    batch = sft_batch(tmp_path, tokenizer)
    with torch.no_grad():
        output = model(batch["input_ids"])
    count = (batch["targets"] != IGNORE_INDEX).sum()
    loss = token_cross_entropy(output.logits, batch["targets"], "sum") / count + output.aux_loss
    assert count == RECORD["sft"]["targets"]
    assert output.aux_loss.item() == RECORD["sft"]["aux_loss"]
    assert loss.item() == pytest.approx(RECORD["sft"]["loss"], rel=RTOL)


def test_dpo_loss_and_rewards_are_upstreams(tmp_path, tokenizer):
    """One batch of all pairs, chosen rows then rejected rows: the frozen reference in evaluation mode, the policy
    in training mode, e119db8's ``dpo_loss(...) + outputs.aux_loss``; each side's mean log-probability and so the
    implicit rewards ``beta * (policy - reference)``."""
    dpo, beta = RECORD["dpo"], RECORD["dpo"]["beta"]
    reference = fixture_model(dpo["weights"]["reference"], tmp_path).eval()
    policy = fixture_model(dpo["weights"]["policy"], tmp_path).train()
    pairs = preference_batch(tmp_path, tokenizer)
    input_ids = torch.cat([pairs["chosen_input_ids"], pairs["rejected_input_ids"]])  # (2 * pairs, seq)
    targets = torch.cat([pairs["chosen_targets"], pairs["rejected_targets"]])
    with torch.no_grad():
        reference_log_probs, mask = target_log_probs(reference(input_ids).logits, targets)
        output = policy(input_ids)
    policy_log_probs, _ = target_log_probs(output.logits, targets)
    result = dpo_loss(policy_log_probs, reference_log_probs, mask, beta)
    assert output.aux_loss.item() == dpo["aux_loss"]
    assert (result.loss + output.aux_loss).item() == pytest.approx(dpo["loss"], rel=RTOL)
    count = len(pairs["chosen_input_ids"])
    for name, log_probs in (("policy", policy_log_probs), ("reference", reference_log_probs)):
        means = sequence_log_probs(log_probs, mask)
        assert means[:count].tolist() == pytest.approx(dpo[f"chosen_{name}"], rel=RTOL)
        assert means[count:].tolist() == pytest.approx(dpo[f"rejected_{name}"], rel=RTOL)
    # a reward is beta times a difference of two means: each mean's error, RTOL of its size, is not relative to it
    scale = max(abs(value) for side in ("chosen", "rejected") for name in ("policy", "reference")
                for value in dpo[f"{side}_{name}"])
    for side, rewards in (("chosen", result.chosen_rewards), ("rejected", result.rejected_rewards)):
        expected = [beta * (p - r) for p, r in zip(dpo[f"{side}_policy"], dpo[f"{side}_reference"], strict=True)]
        torch.testing.assert_close(rewards, torch.tensor(expected), rtol=RTOL, atol=2 * beta * scale * RTOL)
