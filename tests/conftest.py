import os

# Triton decides at kernel-decoration time whether to interpret, so this must be set before
# any test imports the kernels: on CPU-only machines the Triton kernels run interpreted.
# On a GPU machine run `TRITON_INTERPRET=0 pytest` to test the compiled kernels instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.dispatch import triton_interpreted  # noqa: E402


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
