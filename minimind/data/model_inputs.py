"""What the model is called with for one micro-batch: its token ids, and for packed conversations the positions
and the block-diagonal attention that keep each conversation to itself."""

import torch

from minimind.model.packed_attention import packed_attention_mask


def model_inputs(batch: dict[str, torch.Tensor], prefix: str = "", packed_attention: str = "auto") -> dict:
    """``engine(**model_inputs(batch))``'s arguments from a micro-batch already on the device: ``input_ids``, and
    where the samples are packed (``segment_ids`` and ``position_ids``) the ``attention_mask`` (built as
    ``packed_attention`` says: ``minimind.model.packed_attention``) and ``packed_positions`` of
    ``MiniMindModel.forward``. ``prefix`` picks a preference pair's side (``chosen_``)."""
    inputs = {"input_ids": batch[f"{prefix}input_ids"]}
    if f"{prefix}segment_ids" in batch:
        inputs["attention_mask"] = packed_attention_mask(batch[f"{prefix}segment_ids"], packed_attention)
        inputs["packed_positions"] = batch[f"{prefix}position_ids"]
    return inputs


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a micro-batch on ``device``, copied without waiting."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
