"""Chat templates of MiniMind's model families, for the rows that render with their family's template rather
than the tokenizer's own.

``chat_templates/minimind3.jinja`` is, byte for byte, the ``chat_template`` of MiniMind's
``model/tokenizer_config.json`` at d65ef2c (the minimind3 family): every assistant turn opens with a ``<think>``
block (its ``reasoning_content``, or the ``<think>...</think>`` its content starts with, else empty), and a
conversation without a system turn gets none. The shipped tokenizer's own template is e119db8's (minimind2):
no think blocks, and "You are a helpful assistant" where a system turn is missing.
"""

import functools
from pathlib import Path

CHAT_TEMPLATES_DIR = Path(__file__).resolve().parent / "chat_templates"


def family_chat_template(family: str) -> str | None:
    """The chat template a ``family`` model's conversations are rendered with: minimind3's own, or None for
    minimind2 (the tokenizer's, which the shipped tokenizer holds)."""
    return minimind3_chat_template() if family == "minimind3" else None


@functools.cache
def minimind3_chat_template() -> str:
    """The minimind3 family's chat template (MiniMind's at d65ef2c), as Jinja text."""
    return (CHAT_TEMPLATES_DIR / "minimind3.jinja").read_text(encoding="utf-8")
