"""A manifest per checkpoint tag: every file, its size and an xxh3-128 checksum of its bytes.

``manifest.json`` is written last, atomically, after every rank's files are complete, so a
tag with a manifest is a finished save and a tag without one is either an unfinished save
(left by a crash) or a checkpoint from before manifests existed. ``verify_entries`` tells
which file of a tag is missing, truncated or changed, checking sizes only or checksums too.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

from minimind.checkpoint.errors import CheckpointError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
CHECKSUM = "xxh3_128"
READ_CHUNK = 16 * 2**20
VERIFY_MODES = ("checksum", "size")


@dataclass(frozen=True)
class FileEntry:
    """One file of a tag: its path relative to the tag folder, size in bytes and checksum."""

    name: str
    size: int
    checksum: str


def file_entry(path: Path, tag_dir: Path) -> FileEntry:
    """Size and xxh3-128 checksum of ``path`` (a file under ``tag_dir``), read in 16 MiB chunks."""
    digest = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(path.relative_to(tag_dir).as_posix(), size, digest.hexdigest())


def write_manifest(tag_dir: Path, entries: list[FileEntry], world_size: int | None,
                   source: str | None = None) -> Path:
    """Write ``tag_dir/manifest.json`` atomically (a temporary file, synced, renamed over it);
    ``world_size`` is the number of ranks that wrote the tag (None: a universal checkpoint),
    ``source`` the ``tag_state_digest`` of the tag a converted one was made from."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "checksum": CHECKSUM,
        "world_size": world_size,
        "source": source,
        "files": {entry.name: {"size": entry.size, CHECKSUM: entry.checksum}
                  for entry in sorted(entries, key=lambda e: e.name)},
    }
    path = tag_dir / MANIFEST_NAME
    partial = path.with_name(f"{MANIFEST_NAME}.partial")
    with partial.open("w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def tag_files(tag_dir: Path) -> list[Path]:
    """Every file under ``tag_dir`` but its manifest, in name order."""
    return sorted(path for path in tag_dir.rglob("*") if path.is_file() and path.name != MANIFEST_NAME)


def manifest_of_folder(tag_dir: Path, world_size: int | None, source: str | None = None) -> Path:
    """Write the manifest of every file now under ``tag_dir`` (a tag one process wrote)."""
    return write_manifest(tag_dir, [file_entry(path, tag_dir) for path in tag_files(tag_dir)], world_size, source)


def tag_state_digest(tag_dir: Path) -> str:
    """A digest naming one exact state of a tag: xxh3-128 of its manifest file or, for a tag written
    before manifests, of its files' names and sizes (the same on every rank that reads it)."""
    try:
        return xxhash.xxh3_128((tag_dir / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        listing = "\n".join(f"{path.relative_to(tag_dir)} {path.stat().st_size}" for path in tag_files(tag_dir))
        return xxhash.xxh3_128(listing.encode()).hexdigest()


def read_manifest(tag_dir: Path) -> list[FileEntry] | None:
    """The entries of ``tag_dir``'s manifest; None when it has none. An unreadable manifest is a
    ``CheckpointError`` naming it."""
    path = tag_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        return [FileEntry(name, int(record["size"]), str(record[CHECKSUM])) for name, record in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: unreadable manifest ({type(error).__name__}: {error})") from None


def manifest_field(tag_dir: Path, key: str):
    """One field of ``tag_dir``'s manifest (``world_size``: the ranks that wrote it; ``source``: what
    a converted tag was made from); None without a manifest or the field."""
    try:
        return json.loads((tag_dir / MANIFEST_NAME).read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def entry_problem(tag_dir: Path, entry: FileEntry, checksums: bool) -> str | None:
    """Why ``entry``'s file in ``tag_dir`` does not match the manifest (missing, truncated, changed
    size, checksum), or None when it matches."""
    path = tag_dir / entry.name
    if not path.is_file():
        return f"{entry.name} is missing"
    try:
        size = path.stat().st_size
        if size < entry.size:
            return f"{entry.name} is truncated ({size} of {entry.size} bytes)"
        if size != entry.size:
            return f"{entry.name} has {size} bytes, the manifest says {entry.size}"
        if checksums and file_entry(path, tag_dir).checksum != entry.checksum:
            return f"{entry.name} fails its {CHECKSUM} checksum (same size, different bytes)"
    except OSError as error:  # an I/O error, a stale network handle: this rank reports it like any problem
        return f"{entry.name} is unreadable ({error.strerror or error})"
    return None


def verify_entries(tag_dir: Path, entries: list[FileEntry], checksums: bool) -> str | None:
    """The first problem among ``entries`` of ``tag_dir`` (see ``entry_problem``), or None."""
    for entry in entries:
        problem = entry_problem(tag_dir, entry, checksums)
        if problem is not None:
            return problem
    return None
