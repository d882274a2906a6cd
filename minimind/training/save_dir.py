"""Checking the output folder before any work starts."""

import os
import uuid
from pathlib import Path


def check_writable(save_dir: Path) -> None:
    """Create ``save_dir`` if needed and prove it writable with a trial file; raises PermissionError."""
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        trial = save_dir / f".write-test-{uuid.uuid4().hex}"
        trial.write_bytes(b"\0" * 4096)
        trial.unlink()
    except OSError as error:
        raise PermissionError(f"--save_dir {save_dir}: not writable ({error.strerror or error})") from None
    if not os.access(save_dir, os.W_OK):
        raise PermissionError(f"--save_dir {save_dir}: not writable")
