"""The default pretraining corpus: docstrings of the Python standard library, torch and transformers.

Real English prose that every machine running this project already holds, so training works
with no download. The source files are parsed with ``ast`` (never imported); long docstrings
are split on blank lines and pieces of 200-1500 characters are kept, first occurrence only,
in sorted file order. The result is a JSON Lines file (``{"text": ...}`` per line) cached under
``cache_root()``, its name keyed by the Python, torch and transformers versions so a changed
environment builds a new one.

    python -m minimind.data.default_corpus    # build if needed, print path and size
"""

import ast
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import sysconfig
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from minimind.data.build_lock import build_once
from minimind.data.cache_root import cache_root

CORPUS_FORMAT = 1  # bump when the extraction rules change, so that cached corpora are rebuilt
MIN_CHARS = 200
MAX_CHARS = 1500
SKIPPED_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "test", "tests", "testing",
                          "idle_test"})
# Openings in the corpus's own register (API documentation), for the samples a run generates as it trains.
SAMPLE_PROMPTS = ("Return the number of", "This function is used to", "If the input tensor is")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_STATEMENT_LISTS = ("body", "orelse", "finalbody", "handlers", "cases")


def default_corpus_path(cache_dir: str | Path | None = None, *, show_progress: bool = True,
                        log: Callable[[str], None] = print) -> Path:
    """Return the default corpus file, building it first (~30 s on 2 cores) if it is not cached
    (one process at a time; the others wait for its file).

    ``cache_dir`` defaults to ``cache_root()``; ``log`` gets the waiting processes' lines.
    """
    folder = Path(cache_dir) if cache_dir is not None else cache_root()
    versions = "-".join(f"{name}{version}" for name, version in environment_versions())
    path = folder / f"default_corpus-v{CORPUS_FORMAT}-{versions}.jsonl"
    build_once(path, path.is_file, lambda _: build_corpus(default_source_roots(), path, show_progress=show_progress),
               log=log)
    return path


def default_source_roots() -> list[Path]:
    """Return the folders of the standard library, torch and transformers (found, not imported)."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    for package in ("torch", "transformers"):
        spec = importlib.util.find_spec(package)
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    return roots


def build_corpus(source_roots: Sequence[str | Path], out_path: str | Path, *, workers: int | None = None,
                 show_progress: bool = True) -> int:
    """Write the docstring corpus of every ``.py`` file under ``source_roots`` to ``out_path``.

    Files are visited in sorted order (roots in the order given) and parsed on ``workers``
    processes (default: all CPUs); the output is the same for any worker count. The file is
    written to a temporary name and renamed, so a crash never leaves a partial corpus.
    Returns the number of texts; raises ValueError when there are none.
    """
    files = [path for root in source_roots for path in python_files(Path(root))]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out_path.parent,
                                         prefix=f".{out_path.name}.", suffix=".tmp", delete=False)
    try:
        with handle, ProcessPoolExecutor(workers) as pool:
            progress = tqdm(pool.map(file_docstring_pieces, files, chunksize=16), total=len(files),
                            unit="file", desc="default corpus", disable=not show_progress)
            count = _write_unique(progress, handle)
        if count == 0:
            raise ValueError(f"no docstring pieces of {MIN_CHARS}-{MAX_CHARS} characters under "
                             f"{', '.join(map(str, source_roots))}")
        os.replace(handle.name, out_path)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    return count


def file_docstring_pieces(path: str | Path) -> list[str]:
    """Return the docstring pieces of one Python file in source order; [] if it does not parse."""
    try:
        source = Path(path).read_bytes()
        with warnings.catch_warnings():
            # Old files in the standard library trigger these on parse; they say nothing about docstrings.
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    return [piece for docstring in _docstrings(tree) for piece in split_docstring(docstring)]


def split_docstring(docstring: str) -> list[str]:
    """Return the pieces of a cleaned docstring to keep: itself or, when longer than MAX_CHARS,
    its blank-line separated paragraphs; only pieces of MIN_CHARS..MAX_CHARS characters."""
    parts = [docstring] if len(docstring) <= MAX_CHARS else _BLANK_LINES.split(docstring)
    pieces = (part.strip() for part in parts)
    return [piece for piece in pieces if MIN_CHARS <= len(piece) <= MAX_CHARS]


def _docstrings(tree: ast.Module) -> Iterator[str]:
    """Yield module, class and function docstrings in source order, visiting statements only."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DOCSTRING_OWNERS):
            docstring = ast.get_docstring(node)
            if docstring:
                yield docstring
        for field in reversed(_STATEMENT_LISTS):
            stack.extend(reversed(getattr(node, field, None) or ()))


def python_files(root: Path) -> Iterator[str]:
    """Yield the ``.py`` files under ``root`` in sorted order, skipping test suites and caches."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_DIRS)
        yield from (os.path.join(folder, name) for name in sorted(names) if name.endswith(".py"))


def _write_unique(pieces_per_file: Iterable[list[str]], handle) -> int:
    """Write each piece not seen before as one JSON line; return how many were written."""
    seen: set[str] = set()
    for pieces in pieces_per_file:
        for piece in pieces:
            if piece not in seen:
                seen.add(piece)
                handle.write(json.dumps({"text": piece}, ensure_ascii=False) + "\n")
    return len(seen)


def environment_versions() -> list[tuple[str, str]]:
    """The Python, torch and transformers versions whose sources the bundled texts come from."""
    return [("py", platform.python_version()),
            ("torch", importlib.metadata.version("torch")),
            ("transformers", importlib.metadata.version("transformers"))]


def main() -> None:
    """Build the default corpus if needed and print its path and size."""
    path = default_corpus_path()
    with open(path, "rb") as handle:
        texts = sum(1 for _ in handle)
    print(f"{path}: {texts} texts, {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
