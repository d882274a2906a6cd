"""Resuming at another number of ranks: a ZeRO checkpoint converted to DeepSpeed's universal format, once.

A ZeRO checkpoint holds each rank's shard of the optimizer state, and DeepSpeed loads it only
at the world and expert-parallel sizes that wrote it. When this run's differ, the tag is
converted to the universal format once, into ``{checkpoint_dir}/universal/{tag}``, after the
ranks have verified the tag together: one process converts under a file lock while the other
ranks wait on the lock (not in a collective, so no collective timeout runs; the converter's
progress line keeps the waiters from taking it for dead). The copy's manifest records the
digest of the tag it was made from (of its manifest, or of its file listing for a tag from
before manifests), so a later resume, and every rank after the converter, reuses it only for
that same tag (a tag saved again at the same step gets a new copy). A ZeRO stage 0 checkpoint (no
optimizer shards) loads at any world size and is used as it is. ``--auto_universal 0``
refuses instead, naming the command that converts by hand.
"""

import shutil
import threading
import time
from collections.abc import Callable

from minimind.checkpoint.autoep_names import saved_expert_parallel_size
from minimind.checkpoint.integrity import verify_tag
from minimind.checkpoint.locate import UNIVERSAL_FOLDER, CheckpointLocation, latest_tag, read_client_state
from minimind.checkpoint.manifest import manifest_field, tag_state_digest
from minimind.checkpoint.universal import convert_to_universal
from minimind.data.build_lock import BuildProgress, build_once
from minimind.errors import ConfigError

HEARTBEAT_S = 30.0
OPTIMIZER_SHARDS = "*optim_states.pt"  # ZeRO's per-rank optimizer files, which tie a tag to its world size


def written_layout(location: CheckpointLocation) -> tuple[int | None, int | None]:
    """``(ranks that wrote the tag, AutoEP size or None)``: the manifest's count (DeepSpeed's
    ``dp_world_size`` for a checkpoint from before manifests) and the AutoEP layers' size."""
    state = read_client_state(location)
    ranks = manifest_field(location.tag_dir, "world_size") or state.get("dp_world_size")
    return ranks, saved_expert_parallel_size(state)


def layout_differs(location: CheckpointLocation, world: int, ep_size: int | None) -> str | None:
    """How the world and ``ep_size`` that wrote ``location`` differ from this run's, when DeepSpeed
    cannot load it as it is (a ZeRO tag with optimizer shards); None when it can."""
    if location.is_universal or not any(location.tag_dir.glob(OPTIMIZER_SHARDS)):
        return None
    ranks, saved_ep = written_layout(location)
    if (ranks is None or ranks == world) and saved_ep == ep_size:
        return None
    return (f"was written by {ranks} ranks{f' at ep_size {saved_ep}' if saved_ep else ''}; this run has {world}"
            f"{f' at ep_size {ep_size}' if ep_size else ''}")


def refuse_without_auto_universal(location: CheckpointLocation, layout: str) -> None:
    """The one-line refusal of ``--auto_universal 0``, naming the conversion and the resume after it."""
    destination = location.root / UNIVERSAL_FOLDER
    raise ConfigError(f"{location.tag_dir} {layout}: resume it without --auto_universal 0, or convert it yourself "
                      f"(python -m minimind.checkpoint to-universal {location.tag_dir} {destination}) and resume with "
                      f"--resume_from {destination / location.tag}")


def universal_copy(location: CheckpointLocation, layout: str, say: Callable[[str], None]) -> CheckpointLocation:
    """``location``'s universal copy in ``{root}/universal``, converted now unless a copy made from
    this same tag is there and its files match its manifest. Every rank calls it; one converts."""
    destination = location.root / UNIVERSAL_FOLDER
    converted = CheckpointLocation(destination, location.tag)
    source = tag_state_digest(location.tag_dir)
    built = build_once(converted.tag_dir, lambda: copy_of(converted, source),
                       lambda progress: convert_with_heartbeat(location, destination, progress), log=say)
    say(f"{location.tag_dir} {layout}: resuming from its universal copy {converted.tag_dir} "
        f"({'converted now' if built else 'converted before'})")
    return converted


def copy_of(converted: CheckpointLocation, source: str) -> bool:
    """Whether ``converted`` is a finished conversion of the tag whose ``tag_state_digest`` is ``source``,
    its files matching its own manifest (sizes)."""
    if not converted.tag_dir.is_dir() or manifest_field(converted.tag_dir, "source") != source:
        return False
    verdict = verify_tag(converted.tag_dir, latest_tag(converted.root), checksums=False)
    return verdict.loadable and bool(verdict.entries)


def convert_with_heartbeat(source: CheckpointLocation, destination, progress: BuildProgress) -> None:
    """``convert_to_universal`` (replacing what a crashed conversion left), reporting its progress
    every ``HEARTBEAT_S`` so that waiting ranks see it is alive."""
    shutil.rmtree(destination / source.tag, ignore_errors=True)
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            progress.report(f"converting {source.tag_dir} to universal, {time.monotonic() - started:.0f} s")

    heartbeat = threading.Thread(target=beat, daemon=True)
    heartbeat.start()
    try:
        convert_to_universal(source, destination)
    finally:
        done.set()
        heartbeat.join()
