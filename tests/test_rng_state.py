"""RNG state saved and restored per rank, on a fake GPU node (no GPU needed)."""

import random

import numpy as np
import pytest
import torch

from minimind.training.checkpoints.client_state import upgrade_client_state
from minimind.training.checkpoints.tags import restore_rng_state, rng_state


class FakeGpus:
    """``torch.cuda``'s RNG surface for ``count`` devices, the current one ``current``; a device
    index that is not there raises, as torch does."""

    def __init__(self, count: int, current: int):
        self.count, self.current = count, current
        self.states = {index: torch.tensor([index], dtype=torch.uint8) for index in range(count)}

    def check(self, device) -> int:
        index = torch.device("cuda", device).index if isinstance(device, int) else device.index
        if not 0 <= index < self.count:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        return index

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.check(device)].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda state, device="cuda": self.states.__setitem__(self.check(device), state.clone()))
        for name in ("get_rng_state_all", "set_rng_state_all"):  # every visible device: must not be used
            monkeypatch.setattr(torch.cuda, name, lambda *args, name=name: pytest.fail(f"torch.cuda.{name} called"))


def test_a_rank_saves_only_its_own_gpu_s_generator_and_restores_it_where_it_sees_one_gpu(monkeypatch):
    eight = FakeGpus(count=8, current=5)  # rank 5 of a node of 8
    eight.install(monkeypatch)
    saved = rng_state()
    assert torch.equal(saved["cuda"], torch.tensor([5], dtype=torch.uint8))
    one = FakeGpus(count=1, current=0)  # the same rank resumed under Slurm's one GPU per task
    one.install(monkeypatch)
    restore_rng_state(saved)
    assert torch.equal(one.states[0], torch.tensor([5], dtype=torch.uint8))


@pytest.mark.parametrize("current, expected", [(0, 7), (1, 8), (2, None)])
def test_a_checkpoint_holding_every_visible_gpu_s_generator_still_restores(monkeypatch, current, expected):
    """The earlier format (``get_rng_state_all``, a list per rank): the client-state upgrade keeps the current
    device's entry, or none where the resuming rank has no GPU at that index."""
    gpus = FakeGpus(count=3, current=current)
    gpus.install(monkeypatch)
    before = gpus.states[current].clone()
    every_gpu = [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8)]
    saved = {"position": {"step": 1}, "rng_states": [{**rng_state(), "cuda": every_gpu}]}
    (upgraded,) = upgrade_client_state(saved)["rng_states"]
    restore_rng_state(upgraded)
    restored = before if expected is None else torch.tensor([expected], dtype=torch.uint8)
    assert torch.equal(gpus.states[current], restored)


def test_host_generators_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
