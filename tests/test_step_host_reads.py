"""A training step never waits for the accelerator: no value is read back to the host inside it
except the stop vote, copied without draining the queue (``host_copy.copy_to_host_later``).

On CPU ranks a host read costs nothing, so the check intercepts the reads themselves: every
``item()``/``bool()``/``float()``/``int()`` reaches torch as ``aten::_local_scalar_dense``, and
``tolist()``/``numpy()`` are patched. On a GPU each of them would be a device-to-host sync.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.data import IGNORE_INDEX
from minimind.model.loss import token_cross_entropy
from minimind.training.loop import objective as loop
from minimind.training.loop import preference_objective
from tests.plain_engine import PlainEngine


class HostReadError(AssertionError):
    """A tensor's value was read on the host inside the step."""


class RefuseHostReads(TorchDispatchMode):
    """Raises ``HostReadError`` on any tensor-to-Python read while active (except inside ``allowed``)."""

    def __init__(self):
        super().__init__()
        self.allowed_depth = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.allowed_depth:
            raise HostReadError(f"host read of a tensor value inside the step ({func})")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads_refused(monkeypatch):
    """Run the test body with host reads refused; the stop vote's deferred copy is allowed, and counted."""
    mode = RefuseHostReads()
    deferred = []

    def refuse(*args, **kwargs):
        if not mode.allowed_depth:
            raise HostReadError("tolist()/numpy() inside the step")
        return original_tolist(*args, **kwargs)

    original_tolist, original_copy = torch.Tensor.tolist, loop.copy_to_host_later
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    monkeypatch.setattr(torch.Tensor, "numpy", refuse)

    def counted_copy(tensor):
        wait = original_copy(tensor)
        deferred.append(tensor.shape)

        def read():
            mode.allowed_depth += 1
            try:
                return wait().tolist()  # a host tensor read on the host: no accelerator involved
            finally:
                mode.allowed_depth -= 1

        return read

    monkeypatch.setattr(loop, "copy_to_host_later", counted_copy)
    monkeypatch.setattr(preference_objective, "copy_to_host_later", counted_copy)

    class Allowed:
        def __enter__(self):
            mode.allowed_depth += 1

        def __exit__(self, *exc):
            mode.allowed_depth -= 1

    with mode:
        yield Allowed, deferred


def micro_batches(count: int, batch: int, seq: int, vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(count):
        input_ids = torch.randint(0, vocab, (batch, seq), generator=generator)
        targets = torch.randint(0, vocab, (batch, seq), generator=generator)
        targets[0, seq // 3:] = IGNORE_INDEX  # a padded row: fewer targets than positions
        batches.append({"input_ids": input_ids, "targets": targets})
    return batches


@pytest.mark.parametrize("use_moe", [False, True])
def test_a_training_step_reads_nothing_back_but_the_deferred_stop_vote(host_reads_refused, use_moe):
    allowed, deferred = host_reads_refused
    with allowed():
        torch.manual_seed(0)
        model = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                   num_key_value_heads=2, vocab_size=97, use_moe=use_moe))
        batches = micro_batches(3, 2, 11, 97)
    result = loop.train_step(PlainEngine(model), batches, torch.device("cpu"), stop_requested=True)
    assert deferred == [torch.Size([])]  # the stop vote, and nothing else
    with allowed():
        assert result.stop
        # the sums read after the step equal a step computed here on the host, one micro-batch at a time
        targets = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)
        assert result.target_tokens == targets
        with torch.no_grad():
            expected = sum(float(token_cross_entropy(model(input_ids=b["input_ids"]).logits, b["targets"],
                                                     reduction="sum")) for b in batches) / targets
        assert result.loss == pytest.approx(expected, rel=1e-5)


def test_the_check_catches_a_host_read(host_reads_refused):
    """The interception is real: ``item()`` inside the guarded region fails."""
    with pytest.raises(HostReadError):
        torch.ones(()).item()


def preference_batches(count: int, pairs: int, seq: int, vocab: int) -> list[dict]:
    """Seeded DPO micro-batches: both sides' ids and targets, some positions without a target."""
    generator = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(count):
        batch = {}
        for side in ("chosen", "rejected"):
            batch[f"{side}_input_ids"] = torch.randint(0, vocab, (pairs, seq), generator=generator)
            targets = torch.randint(0, vocab, (pairs, seq), generator=generator)
            targets[:, : seq // 2] = IGNORE_INDEX  # the prompt's positions
            batch[f"{side}_targets"] = targets
        batches.append(batch)
    return batches


def test_a_dpo_step_reads_nothing_back_but_the_deferred_stop_vote(host_reads_refused):
    """DPO's step too: the reference's forward, the policy's, the losses and rewards stay on the device; the stop
    vote, reduced before the first forward, is the one deferred copy."""
    allowed, deferred = host_reads_refused
    with allowed():
        torch.manual_seed(0)
        config = MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                vocab_size=97)
        policy, reference = MiniMindForCausalLM(config), MiniMindForCausalLM(config).requires_grad_(False)
        batches = preference_batches(2, 2, 9, 97)
    objective = preference_objective.PreferenceLoss(reference, beta=0.1)
    result = objective.train_step(PlainEngine(policy), batches, torch.device("cpu"), stop_requested=True)
    assert deferred == [torch.Size([])]
    with allowed():
        assert result.stop and result.loss > 0



def test_the_dpo_stop_vote_is_copied_before_the_first_forward(monkeypatch):
    """The vote's copy to the host is queued before any forward, so the host never waits on the step's own work
    to read it (a copy queued after the last backward would)."""
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=97)
    policy, reference = MiniMindForCausalLM(config), MiniMindForCausalLM(config).requires_grad_(False)
    forwards, copied_after = [], []

    class CountingEngine(PlainEngine):
        def __call__(self, **inputs):
            forwards.append(1)
            return super().__call__(**inputs)

    original = preference_objective.copy_to_host_later
    monkeypatch.setattr(preference_objective, "copy_to_host_later",
                        lambda tensor: copied_after.append(len(forwards)) or original(tensor))
    preference_objective.PreferenceLoss(reference, beta=0.1).train_step(
        CountingEngine(policy), preference_batches(2, 2, 9, 97), torch.device("cpu"))
    assert copied_after == [0] and len(forwards) == 2
