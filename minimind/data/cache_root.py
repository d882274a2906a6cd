"""Where derived data (the default corpus, token caches) is kept between runs."""

import os
from pathlib import Path


def cache_root() -> Path:
    """Return ``$MINIMIND_CACHE_DIR`` if set, else ``~/.cache/minimind-ds`` (not created here)."""
    configured = os.environ.get("MINIMIND_CACHE_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path.home() / ".cache" / "minimind-ds"
