"""Choosing the checkpoint a run resumes from, verified by every rank together before anything loads.

``--from_resume 1`` resumes from the newest tag of ``{save_dir}/checkpoints`` whose files match
its manifest, saying in one line which newer tags it skipped and why, and starts a fresh run
(saying so) when the folder holds no checkpoint yet, so one job script serves the first start
and every requeue. ``--resume_from PATH`` resumes from exactly the tag it names and refuses a
broken one, naming the newest intact tag of the same folder instead.

The choice runs twice. Before the process group every rank checks the sizes of every file
(cheap: a missing, truncated or unfinished tag, and the checks of the chosen tag against the
run, cost a second and one line before any heavy work). After it, unless ``--verify_checkpoint
size``, the ranks split the files between them to checksum them, gather their findings and
reach one verdict, so every rank raises the same one-line error or loads the same tag.
"""

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.integrity import TagKind, TagVerdict, inspect_tag
from minimind.checkpoint.locate import (
    MODEL_STATES,
    SUPERSEDED_FOLDER,
    CheckpointLocation,
    latest_tag,
    locate_checkpoint,
    step_tags,
    tag_step,
)
from minimind.checkpoint.manifest import entry_problem
from minimind.training.checkpoints.tags import point_latest_at
from minimind.training.config import CheckpointSection
from minimind.training.distributed.collectives import all_gather_object, barrier, broadcast_object, participants
from minimind.training.distributed.rank_print import print0


@dataclass(frozen=True)
class ResumeRequest:
    """Where to look: the checkpoint folder, and the one tag ``--resume_from`` named (None: the newest intact)."""

    checkpoint_dir: Path
    named: CheckpointLocation | None


def resume_request(checkpoint: CheckpointSection, save_dir: Path) -> ResumeRequest | None:
    """What the resume flags ask for (None: a fresh run). Reads no checkpoint file; a
    ``--resume_from`` path that is not a checkpoint is a ``CheckpointError``."""
    if checkpoint.resume_from:
        named = locate_checkpoint(checkpoint.resume_from)
        return ResumeRequest(named.root, named)
    if checkpoint.from_resume:
        return ResumeRequest(save_dir / "checkpoints", None)
    return None


def choose_resume(request: ResumeRequest | None, checksums: bool, announce: bool) -> CheckpointLocation | None:
    """The verified tag to resume from, or None for a fresh run; ``announce``: say which tags were
    skipped, a fresh start, an unverifiable tag. Collective once the process group exists: every
    rank gets the same answer or raises the same ``CheckpointError``."""
    say = print0 if announce else (lambda line: None)
    if request is None:
        return None
    if request.named is not None:
        return verified_named_tag(request.named, checksums, say)
    tags, latest = folder_listing(request.checkpoint_dir)
    if not broadcast_object(has_complete_tag(request.checkpoint_dir, tags) if participants()[0] == 0 else None):
        if latest is None:
            say(f"--from_resume 1: no checkpoint in {request.checkpoint_dir} yet; starting a fresh run")
            return None
        tags = [latest]  # a folder from before manifests: DeepSpeed's latest, as ever
    skipped = []
    for tag in tags:
        verdict = verify_together(request.checkpoint_dir / tag, latest, checksums)
        if verdict.loadable:
            location = CheckpointLocation(request.checkpoint_dir, tag)
            if skipped:
                say(f"resuming from {tag}, the newest intact checkpoint; skipped {'; '.join(skipped)}")
            warn_if_unverifiable(location, verdict, say)
            return location
        skipped.append(f"{tag} ({verdict.problem})")
    raise CheckpointError(f"{request.checkpoint_dir}: no intact checkpoint to resume from: {'; '.join(skipped)}")


def verified_named_tag(named: CheckpointLocation, checksums: bool, say: Callable[[str], None]) -> CheckpointLocation:
    """``named`` once its files verify; a broken tag is refused, naming the newest intact one beside it."""
    others, latest = folder_listing(named.root)
    verdict = verify_together(named.tag_dir, latest, checksums)
    if verdict.loadable:
        warn_if_unverifiable(named, verdict, say)
        return named
    intact = next((tag for tag in others if tag != named.tag
                   and verify_together(named.root / tag, latest, checksums).loadable), None)
    instead = (f"the newest intact checkpoint there is {named.root / intact} (--resume_from {named.root / intact})"
               if intact else f"no other tag in {named.root} is intact")
    raise CheckpointError(f"{named.tag_dir}: {verdict.problem}; {instead}")


def folder_listing(checkpoint_dir: Path) -> tuple[list[str], str | None]:
    """Rank 0's view of ``checkpoint_dir``: its ``step_N`` tags, newest first, and the tag ``latest``
    names, given to every rank, so that all check the same tags in the same order. Collective."""
    if participants()[0] == 0:
        return broadcast_object(([path.name for path in step_tags(checkpoint_dir)], latest_tag(checkpoint_dir)))
    return broadcast_object(None)


def has_complete_tag(checkpoint_dir: Path, tags: list[str]) -> bool:
    """Whether any of ``tags`` in ``checkpoint_dir`` has a manifest (a finished save)."""
    return any(inspect_tag(checkpoint_dir / tag, None).kind is TagKind.COMPLETE for tag in tags)


def warn_if_unverifiable(location: CheckpointLocation, verdict: TagVerdict, say: Callable[[str], None]) -> None:
    """One line when ``location`` predates manifests and loads unverified."""
    if verdict.kind is TagKind.PRE_MANIFEST:
        say(f"warning: {location.tag_dir} was written before checkpoints had manifests; it loads unverified")


def verify_together(tag_dir: Path, latest: str | None, checksums: bool) -> TagVerdict:
    """``tag_dir``'s verdict, its files checked by all ranks between them (largest first, dealt
    round-robin; by this process alone before the process group exists), the first problem in
    manifest order reported to every rank. Sizes always; checksums when asked, and always for the
    model-states file, which is unpickled before the engine exists. Collective."""
    rank, ranks = participants()
    verdict = broadcast_object(inspect_tag(tag_dir, latest) if rank == 0 else None)
    if verdict.kind is not TagKind.COMPLETE or verdict.problem is not None:
        return verdict
    order = sorted(range(len(verdict.entries)), key=lambda index: -verdict.entries[index].size)
    mine = order[rank::ranks]
    found = []
    for index in mine:
        entry = verdict.entries[index]
        problem = entry_problem(tag_dir, entry, checksums or entry.name == MODEL_STATES)
        if problem is not None:
            found.append((index, problem))
    problems = sorted(problem for rank_problems in all_gather_object(found) for problem in rank_problems)
    return TagVerdict(verdict.kind, verdict.entries, problems[0][1] if problems else None)


def set_aside_newer_tags(resume: CheckpointLocation, checkpoint_dir: Path) -> None:
    """When this run resumes from a tag of its own folder older than others there (a fallback past
    broken tags, or ``--resume_from`` an earlier step), move those newer tags to
    ``{checkpoint_dir}/superseded`` and point ``latest`` at the resumed one: a requeue then
    continues this run, never the abandoned one, and pruning counts this run's tags. Collective."""
    resumed_step = tag_step(resume.tag)
    if participants()[0] == 0 and resume.root == checkpoint_dir and resumed_step is not None:
        newer = [tag_dir for tag_dir in step_tags(checkpoint_dir) if tag_step(tag_dir.name) > resumed_step]
        aside = checkpoint_dir / SUPERSEDED_FOLDER
        for tag_dir in newer:
            aside.mkdir(exist_ok=True)
            shutil.rmtree(aside / tag_dir.name, ignore_errors=True)
            tag_dir.rename(aside / tag_dir.name)
        if newer:
            point_latest_at(checkpoint_dir, resume.tag)
            print0(f"moved {', '.join(tag_dir.name for tag_dir in newer)} aside to {aside}: this run continues "
                   f"from {resume.tag} (delete them once you no longer need them)")
    barrier()
