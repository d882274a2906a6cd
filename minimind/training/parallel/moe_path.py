"""Which dispatch a MoE model takes on this device, said at start where it is the slow one."""

import torch

from minimind.model import MiniMindConfig
from minimind.model.moe import SYNC_FREE_ON_GPU, grouped_dispatch_planned
from minimind.model.precision import PRECISION_DTYPES


def moe_dispatch_notes(model_config: MiniMindConfig, ep_size: int | None, device: torch.device,
                       precision: str) -> tuple[str, ...]:
    """One line where the MoE layers will run their per-expert loop on a GPU: it reads the experts' token
    counts on the host, a device sync per layer and forward; none for a dense model, AutoEP's layers (their
    own dispatch), CPU ranks (a host read there waits for nothing) or the sync-free grouped GEMMs."""
    if not model_config.use_moe or ep_size is not None or device.type == "cpu":
        return ()
    if grouped_dispatch_planned(model_config, device, PRECISION_DTYPES[precision]):
        return ()
    where = str(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where += f", compute capability {major}.{minor}"
    return (f"MoE slow path ({precision} on {where}): each MoE layer runs its per-expert loop, a host sync per "
            f"layer (two under activation checkpointing); bf16 is the fast path, sync-free grouped GEMMs, which need "
            f"{SYNC_FREE_ON_GPU} (ds_configs/zero2_bf16.json)",)
