"""What a tag folder is (a complete save, one from before manifests, an unfinished save) and
whether its files still match its manifest.

A complete tag has a manifest. A tag without one is a checkpoint written before this project
added manifests when nothing says otherwise: it holds DeepSpeed's model states but no MiniMind
``.pth`` (every tag gets one since), and no tag in its folder has a manifest, or every tag that
has one is newer (a run upgraded mid-way); it loads with a warning that it cannot be verified.
Any other tag without a manifest is an unfinished save (a crash before its manifest), or,
when ``latest`` names it, a tag that lost its manifest: both are refused.
"""

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.locate import MODEL_STATES, CheckpointLocation, latest_tag, tag_step
from minimind.checkpoint.manifest import CHECKSUM, MANIFEST_NAME, FileEntry, read_manifest, verify_entries
from minimind.model.pth_weights import WEIGHTS_GLOB


class TagKind(Enum):
    """How a tag folder came to be, from its files alone."""

    COMPLETE = "complete"  # has a manifest
    PRE_MANIFEST = "pre-manifest"  # written before manifests existed
    UNFINISHED = "unfinished"  # a save that never reached its manifest


@dataclass(frozen=True)
class TagVerdict:
    """A tag's kind, its manifest entries (complete tags) and the first problem found (None: intact)."""

    kind: TagKind
    entries: tuple[FileEntry, ...] = ()
    problem: str | None = None

    @property
    def loadable(self) -> bool:
        """Intact, or from before manifests (unverifiable, loaded with a warning)."""
        return self.problem is None and self.kind is not TagKind.UNFINISHED


def tag_kind(tag_dir: Path) -> TagKind:
    """Classify ``tag_dir`` by its files and its neighbours' (see the module docstring)."""
    if read_manifest(tag_dir) is not None:
        return TagKind.COMPLETE
    if any(tag_dir.glob(WEIGHTS_GLOB)) or not (tag_dir / MODEL_STATES).is_file():
        return TagKind.UNFINISHED
    step = tag_step(tag_dir.name)
    manifested = [tag_step(sibling.name) for sibling in tag_dir.parent.iterdir() if (sibling / MANIFEST_NAME).is_file()]
    if not manifested or (step is not None and all(other is not None and step < other for other in manifested)):
        return TagKind.PRE_MANIFEST  # no manifests yet in the folder, or older than the first (an upgraded run)
    return TagKind.UNFINISHED


def inspect_tag(tag_dir: Path, latest: str | None) -> TagVerdict:
    """The kind and manifest of ``tag_dir``, with the problem an unfinished or unreadable tag has
    before any file is checked."""
    try:
        kind = tag_kind(tag_dir)
    except CheckpointError as error:
        return TagVerdict(TagKind.COMPLETE, problem=str(error))
    if kind is TagKind.UNFINISHED:
        why = "its manifest is missing" if tag_dir.name == latest else "an unfinished save"
        return TagVerdict(kind, problem=f"no manifest ({why})")
    return TagVerdict(kind, tuple(read_manifest(tag_dir) or ()))


def verify_tag(tag_dir: Path, latest: str | None, checksums: bool) -> TagVerdict:
    """``inspect_tag`` plus every file of a complete tag checked (sizes; checksums when asked)."""
    verdict = inspect_tag(tag_dir, latest)
    if verdict.kind is not TagKind.COMPLETE or verdict.problem is not None:
        return verdict
    return TagVerdict(verdict.kind, verdict.entries, verify_entries(tag_dir, list(verdict.entries), checksums))


def describe_verdict(tag_dir: Path, verdict: TagVerdict, checksums: bool) -> str:
    """One line for ``verify``/``inspect``: what was checked and what was found."""
    if verdict.kind is TagKind.PRE_MANIFEST:
        return f"{tag_dir.name}: written before manifests; cannot be verified"
    if verdict.problem is not None:
        return f"{tag_dir.name}: BROKEN: {verdict.problem}"
    size = sum(entry.size for entry in verdict.entries)
    how = f"sizes and {CHECKSUM} checksums" if checksums else "sizes only"
    return f"{tag_dir.name}: verified ({len(verdict.entries)} files, {size / 2**20:.1f} MiB, {how})"


def require_intact(location: CheckpointLocation, checksums: bool = True) -> TagVerdict:
    """``location``'s verdict; a broken or unfinished tag is a ``CheckpointError`` naming the first bad file."""
    verdict = verify_tag(location.tag_dir, latest_tag(location.root), checksums)
    if not verdict.loadable:
        raise CheckpointError(f"{location.tag_dir}: {verdict.problem}")
    return verdict
