"""Every collective goes through ``minimind.training.distributed.collectives``, which works on the accelerator device.

gloo accepts collectives on CPU tensors and NCCL crashes on them, so CPU-rank tests cannot
catch a host tensor handed to ``torch.distributed``. The class of bug is ruled out by
construction instead: no module but the helper may call a ``torch.distributed`` (or
``deepspeed.comm``) collective directly, and this test reads every Python file of the
project to prove it.
"""

import ast

import pytest
import torch

from minimind.training.distributed import collectives
from tests.launcher import REPO_ROOT

HELPER = REPO_ROOT / "minimind" / "training" / "distributed" / "collectives.py"
PROJECT_FOLDERS = ("minimind", "kernels", "bench", "tests")
DISTRIBUTED_MODULES = {"torch.distributed", "deepspeed.comm"}
COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_to_all", "all_to_all_single",
    "reduce", "reduce_scatter", "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "gather",
    "gather_object", "scatter", "scatter_object_list", "barrier", "monitored_barrier", "send", "recv", "isend",
    "irecv", "batch_isend_irecv", "all_reduce_coalesced", "all_gather_coalesced", "inference_all_reduce",
}


def direct_collective_calls(source: str) -> list[str]:
    """``line: call`` for every call of a distributed collective in ``source``, however the module was imported."""
    tree = ast.parse(source)
    module_aliases = {}  # local name -> distributed module
    function_aliases = set()  # collectives imported by name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in DISTRIBUTED_MODULES and alias.asname:
                    module_aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in DISTRIBUTED_MODULES:
                    module_aliases[alias.asname or alias.name] = full
                elif node.module in DISTRIBUTED_MODULES and alias.name in COLLECTIVES:
                    function_aliases.add(alias.asname or alias.name)
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in function_aliases:
            calls.append(f"{node.lineno}: {func.id}")
        elif isinstance(func, ast.Attribute) and func.attr in COLLECTIVES:
            owner = ast.unparse(func.value)
            if module_aliases.get(owner, owner) in DISTRIBUTED_MODULES:
                calls.append(f"{node.lineno}: {owner}.{func.attr}")
    return calls


@pytest.mark.parametrize("source", [
    "import torch.distributed as dist\ndist.all_reduce(t)",
    "import torch\ntorch.distributed.all_gather(parts, t)",
    "from torch import distributed\ndistributed.barrier()",
    "from torch.distributed import all_reduce as reduce_all\nreduce_all(t)",
    "import deepspeed.comm as dist\ndist.broadcast(t, 0)",
    "from deepspeed import comm\ncomm.all_to_all_single(out, t)",
    "def f(t):\n    import torch.distributed as d\n    d.all_gather_object(objs, t)",
])
def test_the_checker_finds_a_direct_collective_however_it_is_imported(source):
    assert len(direct_collective_calls(source)) == 1


def test_the_checker_leaves_other_calls_alone():
    source = ("import torch.distributed as dist\nfrom minimind.training.distributed.collectives import all_reduce\n"
              "dist.get_rank()\ndist.is_initialized()\nall_reduce(t)\nother.all_reduce(t)\n")
    assert direct_collective_calls(source) == []


def test_no_module_but_the_helper_calls_a_collective_directly():
    files = [path for folder in PROJECT_FOLDERS for path in (REPO_ROOT / folder).rglob("*.py") if path != HELPER]
    files.append(REPO_ROOT / "pretrain_ds.py")
    assert len(files) > 50 and HELPER.is_file()
    offenders = {str(path.relative_to(REPO_ROOT)): calls
                 for path in files if (calls := direct_collective_calls(path.read_text(encoding="utf-8")))}
    assert offenders == {}, f"call the collectives through minimind.training.distributed.collectives: {offenders}"


def test_without_a_process_group_the_helpers_are_the_collectives_of_a_world_of_one():
    values = torch.randn(5, dtype=torch.float64)
    reduced = collectives.all_reduce(values.clone())
    assert reduced.device == collectives.accelerator_device()
    torch.testing.assert_close(reduced.cpu(), values, rtol=0, atol=0)
    gathered = collectives.all_gather(values)
    assert len(gathered) == 1 and torch.equal(gathered[0].cpu(), values)
    assert collectives.all_gather_object({"a": 1}) == [{"a": 1}]
    assert collectives.broadcast_object("x") == "x"
    collectives.barrier()


def test_helpers_return_results_on_the_accelerator_device(monkeypatch):
    """A host tensor handed to the helper reaches torch.distributed on the accelerator's current device."""
    seen = []
    monkeypatch.setattr(collectives.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(collectives.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(collectives.dist, "all_reduce", lambda tensor, op=None, group=None: seen.append(tensor))
    monkeypatch.setattr(collectives, "accelerator_device", lambda: torch.device("meta"))
    result = collectives.all_reduce(torch.ones(3))
    assert seen[0].device.type == "meta" and result is seen[0]
