"""Work units claimed across processes: a non-blocking lock per unit, so that every process that builds
a token cache, on this node or on another node sharing the cache folder, tokenizes units no one holds.

A unit's lock file sits beside its part (``token_parts``). Its holder tokenizes the unit into the
part and rewrites a progress line in the lock file as it goes, as ``build_lock`` does for a whole
build; a process that dies has its lock released by the kernel, and its unit, still without a
part, is taken by the next process that passes. A unit held with no progress for
``build_lock.STALE_AFTER_S`` (a network file system keeping a crashed node's lock) stops the
waiters in one line. Where the file system has no locks, every process tokenizes every unit.
"""

import contextlib
import enum
import fcntl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from minimind.data import build_lock
from minimind.data.build_lock import BuildProgress, HolderWatch
from minimind.data.document_encoding import TokenizeSettings, encoded_documents
from minimind.data.token_parts import PartWriter, part_path, parts_folder
from minimind.data.work_units import WorkUnit


class Claim(enum.Enum):
    """What became of one pass over a unit."""

    TOKENIZED = "tokenized here"
    DONE = "done already"  # its part exists, or its whole cache
    HELD = "held by another process"


@dataclass(frozen=True)
class UnitTask:
    """One work unit of a data file whose token cache is ``cache_folder``, tokenized as ``settings`` say."""

    unit: WorkUnit
    cache_folder: Path
    settings: TokenizeSettings

    @property
    def part_path(self) -> Path:
        return part_path(self.cache_folder, self.unit.name)

    @property
    def lock_path(self) -> Path:
        return parts_folder(self.cache_folder) / f"{self.unit.name}.lock"

    def done(self) -> bool:
        """Whether the unit's part exists, or the whole cache (whose assembly removed the parts)."""
        return self.part_path.is_file() or (self.cache_folder / "meta.json").is_file()


def claim_and_tokenize(task: UnitTask, tokenizer: Tokenizer, report: Callable[[int], None]) -> Claim:
    """Tokenize ``task``'s unit into its part unless it is done or another process holds it.

    ``report(n)`` receives the file bytes read as they are read (``n`` more each time).
    """
    if task.done():
        return Claim.DONE
    try:
        with open(task.lock_path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return Claim.HELD
            except OSError:  # ENOLCK and the like: no locking here
                pass
            if task.done():  # finished by the holder this process just missed
                return Claim.DONE
            tokenize_unit(task, tokenizer, BuildProgress(handle), report)
            return Claim.TOKENIZED  # closing the lock file releases the lock
    except FileNotFoundError:
        if task.done():  # the parts folder went with the assembly of the cache
            return Claim.DONE
        raise


def tokenize_unit(task: UnitTask, tokenizer: Tokenizer, lock_progress: BuildProgress,
                  report: Callable[[int], None]) -> None:
    """Tokenize ``task``'s unit into its part file, telling waiters (``lock_progress``) and ``report`` how far."""
    settings = task.settings
    reader = task.unit.reader(skip_bad_lines=settings.skip_bad_lines, text_field=settings.text_field)
    reported = 0
    lock_progress.report(f"started {task.unit.path.name} ({task.unit.name})")  # not a dead holder's last line
    with PartWriter(task.part_path) as part:
        for tokens, lengths in encoded_documents(reader, tokenizer, settings):
            part.write(tokens, lengths)
            report(reader.counts.bytes_read - reported)
            reported = reader.counts.bytes_read
            lock_progress.report(f"tokenized {reported / 2**20:.1f} of {task.unit.size / 2**20:.1f} MiB of "
                                 f"{task.unit.path.name} ({task.unit.name})")
        part.finish(reader.counts)
    report(reader.counts.bytes_read - reported)


def finish_units(tasks: Sequence[UnitTask], tokenizer: Tokenizer, report: Callable[[int], None],
                 log: Callable[[str], None]) -> int:
    """Tokenize here each unit of ``tasks`` that no process holds, and wait for those others hold, until every
    part exists (a unit whose holder dies is taken here); returns how many units this process tokenized.

    While waiting, logs one holder's progress line every ``build_lock.REPORT_EVERY_S``; a holder whose line
    stands still for ``build_lock.STALE_AFTER_S`` is a ``DataError`` naming its lock file.
    """
    remaining, watches, tokenized, last_report = list(tasks), {}, 0, None
    while True:
        held = []
        for task in remaining:
            claim = claim_and_tokenize(task, tokenizer, report)
            tokenized += claim is Claim.TOKENIZED
            if claim is Claim.HELD:
                held.append(task)
        remaining = held
        if not remaining:
            return tokenized
        lines = []
        for task in remaining:
            with contextlib.suppress(FileNotFoundError):  # gone with the parts folder: done by the next pass
                lines.append(watches.setdefault(task.lock_path, HolderWatch(task.lock_path)).check())
        now = time.monotonic()
        if lines and (last_report is None or now - last_report >= build_lock.REPORT_EVERY_S):
            units = f"{len(remaining)} unit{'s' if len(remaining) > 1 else ''}"
            log(f"token cache: waiting for {units} that other processes hold ({lines[0]})")
            last_report = now
        time.sleep(build_lock.POLL_S)
