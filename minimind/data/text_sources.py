"""Which reader a data file takes, by its name: JSON Lines (plain, gzip or Zstandard) or Parquet."""

from pathlib import Path

from minimind.data.jsonl_reader import COMPRESSED_SUFFIXES, DataError, JsonlTextReader, ReadCounts
from minimind.data.parquet_reader import ParquetTextReader

JSONL_SUFFIXES = (".jsonl", ".json")  # JSON Lines either way (MiniMind's files are .jsonl)
COMPRESSIONS = ("", *COMPRESSED_SUFFIXES)
PARQUET_SUFFIX = ".parquet"
DATA_SUFFIXES = (*(suffix + compression for suffix in JSONL_SUFFIXES for compression in COMPRESSIONS),
                 PARQUET_SUFFIX)


def text_reader(path: str | Path, *, skip_bad_lines: bool = False,
                text_field: str = "text") -> JsonlTextReader | ParquetTextReader:
    """The streaming reader of ``path``'s texts, chosen by its suffix (``DATA_SUFFIXES``); another suffix
    is a one-line ``DataError``."""
    path = Path(path)
    if path.name.endswith(PARQUET_SUFFIX):
        return ParquetTextReader(path, skip_bad_lines=skip_bad_lines, text_field=text_field)
    if path.name.endswith(DATA_SUFFIXES):
        return JsonlTextReader(path, skip_bad_lines=skip_bad_lines, text_field=text_field)
    raise DataError(path, None, f"not a data file this run reads (names ending {', '.join(DATA_SUFFIXES)})")


def validate_texts(path: str | Path, *, skip_bad_lines: bool = False, text_field: str = "text") -> ReadCounts:
    """Read the whole file once, without tokenizing; raise ``DataError`` on the first problem."""
    reader = text_reader(path, skip_bad_lines=skip_bad_lines, text_field=text_field)
    for _ in reader:
        pass
    return reader.counts
