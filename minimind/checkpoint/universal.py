"""Converting a ZeRO checkpoint tag to DeepSpeed's universal format with ``ds_to_universal``.

A universal checkpoint stores every parameter whole (``zero/{name}/fp32.pt``, ``exp_avg.pt``,
``exp_avg_sq.pt``, ``step.pt``), so it loads at any data-parallel size with
``"checkpoint": {"load_universal": true}`` in the DeepSpeed config.
"""

import argparse
import contextlib
import io
import shutil
from pathlib import Path

from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.locate import CheckpointLocation
from minimind.checkpoint.manifest import manifest_of_folder, tag_state_digest


def convert_to_universal(source: CheckpointLocation, destination: str | Path, workers: int = 1,
                         keep_temp_folder: bool = False) -> CheckpointLocation:
    """Write ``destination/{tag}`` in universal format and ``destination/latest_universal``; returns it.

    Checkpoints whose client state lacks ``universal_checkpoint_info`` (``pretrain_ds.py``
    does not write it) get DeepSpeed's default injected (``--inject_missing_state``), which
    is what a dense ZeRO-1/2 checkpoint needs. DeepSpeed's progress output is captured and
    only shown when the conversion fails.
    """
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    if source.is_universal:
        raise CheckpointError(f"{source.tag_dir}: already a universal checkpoint")
    destination = Path(destination).resolve()
    output = destination / source.tag
    if output.exists():
        raise CheckpointError(f"{output}: already exists; remove it or choose another destination")
    destination.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(
        input_folder=str(source.tag_dir),
        output_folder=str(output),
        num_extract_workers=workers,
        num_merge_workers=workers,
        keep_temp_folder=keep_temp_folder,
        strict=True,
        inject_missing_state=True,
    )
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            ds_to_universal(args)
    except Exception as error:
        shutil.rmtree(output, ignore_errors=True)
        last = log.getvalue().strip().splitlines()[-1:] or [""]
        raise CheckpointError(
            f"{source.tag_dir}: ds_to_universal failed ({type(error).__name__}: {error}) after {last[0]!r}"
        ) from None
    manifest_of_folder(output, world_size=None, source=tag_state_digest(source.tag_dir))
    return CheckpointLocation(destination, source.tag)
