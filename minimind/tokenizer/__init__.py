"""MiniMind's tokenizer: loading and validating a tokenizer folder, and naming it for cache keys.

Train one with ``python -m minimind.tokenizer.train``; ``load_tokenizer()`` gives the shipped
default in ``minimind/tokenizer/default/``. ``minimind3_chat_template()`` is the minimind3 family's chat template.
"""

from minimind.tokenizer.chat_templates import minimind3_chat_template
from minimind.tokenizer.loader import (
    BOS_ID,
    DEFAULT_TOKENIZER_DIR,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    TokenizerLayoutError,
    load_tokenizer,
    require_chat_template,
    tokenizer_fingerprint,
)

__all__ = [
    "BOS_ID",
    "DEFAULT_TOKENIZER_DIR",
    "EOS_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "TokenizerLayoutError",
    "load_tokenizer",
    "minimind3_chat_template",
    "require_chat_template",
    "tokenizer_fingerprint",
]
