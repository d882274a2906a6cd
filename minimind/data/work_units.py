"""A data file cut into work units that processes tokenize independently, planned from the file alone.

The plan depends on nothing but the file and the part size (never on how many processes
tokenize), so every process, on this node or on another node sharing the cache folder, cuts a
file the same way: a plain JSON Lines file into byte ranges (a unit reads the lines whose first
byte lies in its range), a Parquet file into runs of row groups, and a compressed JSON Lines
file, which cannot be entered in the middle, into one unit. A file that fits in one part is one
unit too.
"""

from dataclasses import dataclass
from pathlib import Path

from minimind.data.jsonl_reader import JsonlTextReader
from minimind.data.parquet_reader import ParquetTextReader, row_group_bytes
from minimind.data.text_sources import JSONL_SUFFIXES, PARQUET_SUFFIX, text_reader

# A file is cut into about UNITS_PER_FILE parts of MIN_PART_BYTES to PART_BYTES each: enough parts
# that the cores of a node (or several) share even one mid-sized file, and that the last parts,
# tokenized while other processes run out of work, are short; each part large enough that its fixed
# costs (a lock, a part file, a process's first batch) vanish beside its tenth of a second to few
# seconds of tokenizing; and a crash loses at most one part's work per process.
UNITS_PER_FILE = 64
MIN_PART_BYTES = 2**20
PART_BYTES = 16 * 2**20


@dataclass(frozen=True)
class WorkUnit:
    """One independently tokenizable piece of a data file: a byte range, a run of row groups, or the whole file."""

    path: Path
    name: str  # what the unit covers ("bytes-0-16777216"): its part is found by it, whatever plan wrote it
    size: int  # the file bytes it covers, as its reader's ``counts.bytes_read`` counts them at the end
    byte_range: tuple[int, int] | None = None
    row_groups: range | None = None

    def reader(self, *, skip_bad_lines: bool, text_field: str) -> JsonlTextReader | ParquetTextReader:
        """The reader of this unit's texts (only the whole file's reader says "no texts")."""
        if self.byte_range is not None:
            return JsonlTextReader(self.path, skip_bad_lines=skip_bad_lines, text_field=text_field,
                                   byte_range=self.byte_range)
        if self.row_groups is not None:
            return ParquetTextReader(self.path, skip_bad_lines=skip_bad_lines, text_field=text_field,
                                     row_groups=self.row_groups)
        return text_reader(self.path, skip_bad_lines=skip_bad_lines, text_field=text_field)


def plan_units(path: Path, part_bytes: int | None = None) -> list[WorkUnit]:
    """The work units of ``path``, in file order, each covering about ``part_bytes`` of it (the last one less;
    default: ``part_size`` of the file's size)."""
    size = path.stat().st_size
    part_bytes = part_bytes or part_size(size)
    if path.name.endswith(PARQUET_SUFFIX):
        units = _row_group_runs(path, size, part_bytes)
    elif path.suffix in JSONL_SUFFIXES:  # plain: a compressed file's suffix is .gz or .zst
        units = [WorkUnit(path, f"bytes-{start}-{min(start + part_bytes, size)}", min(part_bytes, size - start),
                          byte_range=(start, min(start + part_bytes, size))) for start in range(0, size, part_bytes)]
    else:
        units = []
    return units if len(units) > 1 else [WorkUnit(path, "whole", size)]


def part_size(file_size: int) -> int:
    """The part size of a file of ``file_size`` bytes: a ``UNITS_PER_FILE``-th of it, from ``MIN_PART_BYTES`` to
    ``PART_BYTES``."""
    return min(max(file_size // UNITS_PER_FILE, MIN_PART_BYTES), PART_BYTES)


def _row_group_runs(path: Path, size: int, part_bytes: int) -> list[WorkUnit]:
    """Runs of consecutive row groups of at least ``part_bytes`` each (the last one less); none when the file's
    metadata cannot be read (its reader will say why)."""
    import pyarrow  # only for Parquet files
    import pyarrow.parquet

    try:
        group_bytes = row_group_bytes(pyarrow.parquet.read_metadata(path), size)
    except (OSError, pyarrow.ArrowException):
        return []
    units, first, run_bytes = [], 0, 0
    for group, nbytes in enumerate(group_bytes):
        run_bytes += nbytes
        if run_bytes >= part_bytes or group == len(group_bytes) - 1:
            units.append(WorkUnit(path, f"row-groups-{first}-{group + 1}", run_bytes,
                                  row_groups=range(first, group + 1)))
            first, run_bytes = group + 1, 0
    return units
