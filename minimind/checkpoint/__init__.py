"""Checkpoint tools: export to Hugging Face or MiniMind ``.pth``, convert to universal format, inspect.

Run as ``python -m minimind.checkpoint {export,to-universal,inspect} SRC [DST]``; see ``__main__``.
The names below are imported on first use, so that a light module of the package
(``hf_architecture``, which ``python -m minimind.generate`` reads Hugging Face folders with) loads
without DeepSpeed, which reading checkpoints needs.
"""

import importlib

MODULE_OF = {
    "CheckpointError": "minimind.checkpoint.errors",
    "CheckpointLocation": "minimind.checkpoint.locate",
    "convert_to_universal": "minimind.checkpoint.universal",
    "export_checkpoint": "minimind.checkpoint.export",
    "locate_checkpoint": "minimind.checkpoint.locate",
}
__all__ = sorted(MODULE_OF)


def __getattr__(name: str):
    """One of ``__all__``, imported from its module when first asked for."""
    if name not in MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(MODULE_OF[name]), name)
