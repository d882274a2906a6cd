"""Streaming reader for pretraining data in Parquet: a string column of texts (``text`` by default).

The file is read one row group at a time, and only its text column (``pyarrow``), so memory
holds one row group's texts, never the file. Problems are one-line :class:`DataError`s naming
the file and, for a bad value, the row group and the row within it: ``data/x.parquet:row group
3:row 17: expected a "text" string, found null``.
"""

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

from minimind.data.jsonl_reader import DataError, ReadCounts


class ParquetTextReader:
    """Iterable over the texts of a Parquet file's ``text_field`` column, as ``JsonlTextReader`` over lines.

    Blank texts are skipped and counted; a value that is not a string (a null, or a column of
    another type) raises :class:`DataError`, or is skipped and counted as a bad row when
    ``skip_bad_lines``. A missing column, an unreadable file or a file with no texts is a
    :class:`DataError`. ``counts.bytes_read`` grows with the rows read, as a share of the file's size
    (``row_group_bytes``).

    ``row_groups`` (a range of row-group indices) reads only those; such a part may hold no texts.
    """

    def __init__(self, path: str | Path, *, skip_bad_lines: bool = False, text_field: str = "text",
                 row_groups: range | None = None):
        self.path = Path(path)
        self.skip_bad_lines = skip_bad_lines
        self.text_field = text_field
        self.row_groups = row_groups
        self.counts = ReadCounts()

    def __iter__(self) -> Iterator[str]:
        import pyarrow  # only for Parquet files
        import pyarrow.parquet

        self.counts = ReadCounts()
        try:
            parquet = pyarrow.parquet.ParquetFile(self.path)
        except (OSError, pyarrow.ArrowException) as error:
            raise DataError(self.path, None, f"cannot read as Parquet ({error})") from None
        with contextlib.closing(parquet):
            schema = parquet.schema_arrow
            if self.text_field not in schema.names:
                raise DataError(self.path, None, f"no column {self.text_field!r} (columns: {', '.join(schema.names)}; "
                                                 "--text_field names another)")
            column_type = schema.field(self.text_field).type
            is_text = pyarrow.types.is_string(column_type) or pyarrow.types.is_large_string(column_type)
            group_bytes = row_group_bytes(parquet.metadata, self.path.stat().st_size)
            for group in self.row_groups if self.row_groups is not None else range(parquet.num_row_groups):
                try:
                    column = parquet.read_row_group(group, columns=[self.text_field]).column(0)
                except (OSError, pyarrow.ArrowException) as error:
                    raise DataError(self.path, None, f"row group {group}: unreadable ({error})") from None
                for row, text in enumerate(column.to_pylist()):
                    if not is_text or text is None:
                        found = "null" if text is None else type(text).__name__
                        if not self.skip_bad_lines:
                            raise DataError(f"{self.path}:row group {group}:row {row}", None,
                                            f'expected a "{self.text_field}" string, found {found}')
                        self.counts.bad_lines += 1
                    elif not text.strip():
                        self.counts.blank += 1
                    else:
                        self.counts.texts += 1
                        yield text
                self.counts.bytes_read += group_bytes[group]
        if self.counts.texts == 0 and self.row_groups is None:
            raise DataError(self.path, None, f"no texts ({parquet.metadata.num_rows} rows, {self.counts.blank} blank, "
                                             f"{self.counts.bad_lines} bad)")


def row_group_bytes(metadata, file_size: int) -> list[int]:
    """Each row group's share of ``file_size`` by its rows (``metadata``: pyarrow's ``FileMetaData``), the shares
    summing to ``file_size``: what the reader counts as read after each group, and how work units are sized."""
    rows_through = itertools.accumulate(metadata.row_group(group).num_rows for group in range(metadata.num_row_groups))
    ends = [file_size * rows // max(metadata.num_rows, 1) for rows in rows_through]
    return [end - start for start, end in itertools.pairwise([0, *ends])]
