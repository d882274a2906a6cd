"""Checkpoint tools: export to Hugging Face or MiniMind ``.pth``, convert to universal format, inspect.

Run as ``python -m minimind.checkpoint {export,to-universal,inspect} SRC [DST]``; see ``__main__``.
"""

from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.export import export_checkpoint
from minimind.checkpoint.locate import CheckpointLocation, locate_checkpoint
from minimind.checkpoint.universal import convert_to_universal

__all__ = [
    "CheckpointError",
    "CheckpointLocation",
    "convert_to_universal",
    "export_checkpoint",
    "locate_checkpoint",
]
