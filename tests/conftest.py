import os
from pathlib import Path

import torch

# Triton decides at kernel-decoration time whether to interpret, so this must be set before
# any test imports the kernels. Without a CUDA device the Triton kernels run interpreted on
# CPU; on a GPU machine the tests compile them (set TRITON_INTERPRET=1 to interpret there too).
# torch.cuda.is_available() only counts devices; it creates no CUDA context to inherit.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# DeepSpeed in this process (``pretrain_ds.main`` called by a test) and in every process the
# tests start runs on its CPU accelerator: gloo, CPU tensors, the CPU demonstration's defaults,
# as on a CPU-only machine. DeepSpeed picks its accelerator once, at the first
# ``get_accelerator()`` (``DS_ACCELERATOR`` overrides its detection), so this comes before any
# import of DeepSpeed. The GPU stays visible to torch: the tests marked ``gpu`` use it directly.
# Launched ranks also get ``tests.launcher.CPU_RANKS``.
os.environ["DS_ACCELERATOR"] = "cpu"

import pytest  # noqa: E402
from deepspeed.ops.triton_ops import _triton as deepspeed_triton  # noqa: E402
from deepspeed.ops.triton_ops import swiglu_triton  # noqa: E402

from minimind.tokenizer.loader import load_tokenizer  # noqa: E402
from minimind_kernels.dispatch import triton_interpreted  # noqa: E402
from tests import launcher  # noqa: E402
from tests.launcher import REFERENCE_TRAINING, evaluation_flags, launch, write_corpus  # noqa: E402

# DeepSpeed's Triton ops (AutoEP's fused SwiGLU) decide once, at import, whether Triton can run,
# from torch.cuda alone: on a GPU node they would launch compiled kernels on the CPU accelerator's
# tensors. In this process they take their PyTorch path, as on a CPU-only machine (a no-op there).
deepspeed_triton._TRITON_AVAILABLE = swiglu_triton._TRITON_AVAILABLE = False

# The suite's tiers, marked here and nowhere else (``pytest -m``; pyproject.toml describes the marks):
# - ``launch``: every test that uses ``launch_dir``, the folder of the session's launched runs, directly or
#   through another fixture (``reference_run``, ``corpus``, ``launch_env_vars``, ...): the tests that start
#   DeepSpeed ranks in processes of their own write under it, and those that read such runs read it. The
#   fast tier (``-m "not launch"``) launches nothing: a launch from a test without the mark fails it
#   (``tests.launcher.refuse_launch_in_fast_tier``).
# - ``gpu``: every test that uses ``cuda_device``; skipped where CUDA is missing.
MARKS_BY_FIXTURE = {"launch_dir": "launch", "cuda_device": "gpu"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Mark each test by the fixtures it uses (``MARKS_BY_FIXTURE``), before ``-m`` selects."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture, mark in MARKS_BY_FIXTURE.items():
            if fixture in fixtures:
                item.add_marker(mark)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Allow launches, in the test's fixtures and in the test itself, only for ``launch`` tests."""
    launcher.launches_allowed = item.get_closest_marker("launch") is not None


def nan_filled_empty(shape, dtype, device):
    """Stand-in for the kernel launchers' ``_empty``: NaN-filled, so unwritten elements show up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.fixture
def device() -> torch.device:
    """Where the Triton kernels run: CPU when interpreted, else CUDA; skipped elsewhere."""
    if triton_interpreted():
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")


@pytest.fixture
def cuda_device() -> torch.device:
    """The CUDA device of a test that needs one (marked ``gpu``); skipped where there is none."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="session")
def tokenizer():
    """The shipped tokenizer, loaded once for the tests that read with it (none changes it)."""
    return load_tokenizer()


@pytest.fixture(scope="session")
def launch_dir(tmp_path_factory) -> Path:
    """One folder for the session's launched runs, their corpus and their token cache; a test that uses it
    is marked ``launch``."""
    return tmp_path_factory.mktemp("launched")


@pytest.fixture(scope="session")
def launch_env_vars(launch_dir) -> dict:
    """Environment for launched runs: a token cache of their own, shared by all of them."""
    return {"MINIMIND_CACHE_DIR": str(launch_dir / "cache")}


@pytest.fixture(scope="session")
def corpus(launch_dir) -> Path:
    """The learnable JSON Lines corpus every launched run trains on."""
    return write_corpus(launch_dir / "corpus.jsonl")


@pytest.fixture(scope="session")
def eval_corpus(launch_dir) -> Path:
    """A validation file drawn from the same distribution as ``corpus``, other documents."""
    return write_corpus(launch_dir / "eval.jsonl", lines=30, seed=1)


@pytest.fixture(scope="session")
def reference_run(launch_dir, corpus, eval_corpus, launch_env_vars) -> Path:
    """``save_dir`` of one uninterrupted 2-rank run with ``REFERENCE_TRAINING`` (and evaluation on
    ``eval_corpus``), shared by every test that compares against it or reads its checkpoints (which
    must not be written to)."""
    save_dir = launch_dir / "reference"
    launch(2, [*REFERENCE_TRAINING, "--data_path", str(corpus), *evaluation_flags(eval_corpus),
               "--save_dir", str(save_dir)], env=launch_env_vars)
    return save_dir
