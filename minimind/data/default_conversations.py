"""The bundled conversation and preference sets, for fine-tuning with no download: questions about the
functions and classes whose docstrings make the default pretraining corpus, answered from those docstrings.

- Conversations (``{"conversations": [user, assistant]}``, MiniMind's SFT format): the user asks what a
  function or class does, by its qualified name; the assistant answers with the docstring's first paragraph.
- Preference pairs (``{"chosen": [...], "rejected": [...]}``, MiniMind's DPO format): the same question about
  other names, the answer chosen and the same answer with its words in a seeded shuffled order rejected: a
  preference for fluent text over the same words scrambled, which a small model can learn and show on held-out
  pairs.

The texts come from the installed sources, read with ``ast`` (never imported), as the pretraining corpus's:
the standard library's (PSF licence), torch's (BSD-3-Clause) and transformers' (Apache-2.0) docstrings. The
files are cached under ``cache_root()``, named by the same versions, and the same on every machine with them.

    python -m minimind.data.default_conversations    # build if needed, print the paths and sizes
"""

import ast
import json
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from minimind.data.build_lock import build_once
from minimind.data.cache_root import cache_root
from minimind.data.default_corpus import default_source_roots, environment_versions, python_files

CONVERSATIONS_FORMAT = 2  # bump when the rules below change, so that cached sets are rebuilt
MIN_ANSWER_CHARS, MAX_ANSWER_CHARS = 40, 400
SEED = 0
QUESTION = "What does `{name}` do?"
# What a fine-tuning run on the bundled sets asks its model at each evaluation (--sample_prompts default).
CHAT_PROMPTS = (QUESTION.format(name="json.dumps"), QUESTION.format(name="torch.nn.Linear"),
                "Who are you?")


def answered_names(path: str | Path, module: str) -> Iterator[tuple[str, str]]:
    """``(qualified name, first docstring paragraph)`` of every public function and class of one Python file
    whose paragraph is ``MIN_ANSWER_CHARS``..``MAX_ANSWER_CHARS`` characters long, in source order; none when
    the file does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return
    stack = [(node, module) for node in reversed(tree.body)]
    while stack:
        node, owner = stack.pop()
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.name.startswith("_"):
            continue
        name = f"{owner}.{node.name}"
        paragraph = (ast.get_docstring(node) or "").split("\n\n")[0].strip()
        if MIN_ANSWER_CHARS <= len(paragraph) <= MAX_ANSWER_CHARS:
            yield name, " ".join(paragraph.split())
        if isinstance(node, ast.ClassDef):
            stack.extend((child, name) for child in reversed(node.body))


def module_name(root: Path, path: str) -> str:
    """The dotted module name of ``path`` under the source folder ``root`` (a package folder keeps its name)."""
    relative = Path(path).relative_to(root).with_suffix("")
    parts = [*((root.name,) if (root / "__init__.py").is_file() else ()), *relative.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def answers(source_roots: Sequence[str | Path], limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` ``(name, answer)`` pairs under ``source_roots``, each name and each answer once, in a
    seeded order of their sorted-file order."""
    found, seen_names, seen_answers = [], set(), set()
    for root in map(Path, source_roots):
        for path in python_files(root):
            for name, answer in answered_names(path, module_name(root, path)):
                if name not in seen_names and answer not in seen_answers:
                    seen_names.add(name)
                    seen_answers.add(answer)
                    found.append((name, answer))
    random.Random(SEED).shuffle(found)
    return found[:limit]


def conversation(name: str, answer: str) -> list[dict]:
    """The user's question about ``name`` and the assistant's ``answer``."""
    return [{"role": "user", "content": QUESTION.format(name=name)}, {"role": "assistant", "content": answer}]


def scrambled(answer: str, seed: int) -> str:
    """``answer``'s words in a seeded shuffled order, never the original order (an answer of one word, or of
    one repeated word, gets an extra copy of its last word instead)."""
    words = answer.split()
    shuffled = list(words)
    random.Random(seed).shuffle(shuffled)
    if shuffled == words:
        shuffled = [*words, words[-1]]
    return " ".join(shuffled)


def build_sets(source_roots: Sequence[str | Path], sft_path: Path, dpo_path: Path, *, conversations: int,
               pairs: int) -> tuple[int, int]:
    """Write ``conversations`` SFT conversations to ``sft_path`` and ``pairs`` preference pairs (about other
    names: the answer chosen, its words scrambled rejected) to ``dpo_path``, each atomically; returns how many of
    each were written. ``ValueError`` when the sources hold fewer than both need."""
    found = answers(source_roots, conversations + pairs)
    if len(found) < conversations + pairs:
        raise ValueError(f"{len(found)} answered names under {', '.join(map(str, source_roots))}; "
                         f"{conversations + pairs} needed")
    sft = [{"conversations": conversation(name, answer)} for name, answer in found[:conversations]]
    dpo = [{"chosen": conversation(name, answer), "rejected": conversation(name, scrambled(answer, SEED + index))}
           for index, (name, answer) in enumerate(found[conversations:])]
    write_jsonl(sft, sft_path)
    write_jsonl(dpo, dpo_path)
    return len(sft), len(dpo)


def write_jsonl(rows: list[dict], path: Path) -> None:
    """``rows`` as JSON Lines at ``path``, through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(handle.name, path)
    finally:
        Path(handle.name).unlink(missing_ok=True)


def default_conversation_paths(cache_dir: str | Path | None = None, *, conversations: int = 4000,
                               pairs: int = 1000, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """The bundled SFT and DPO files, built first if they are not cached (one process at a time; the others
    wait for them). ``cache_dir`` defaults to ``cache_root()``."""
    folder = Path(cache_dir) if cache_dir is not None else cache_root()
    versions = "-".join(f"{name}{version}" for name, version in environment_versions())
    stem = f"default_conversations-v{CONVERSATIONS_FORMAT}-{conversations}x{pairs}-{versions}"
    sft_path, dpo_path = folder / f"{stem}.sft.jsonl", folder / f"{stem}.dpo.jsonl"
    build_once(dpo_path, lambda: sft_path.is_file() and dpo_path.is_file(),
               lambda _: build_sets(default_source_roots(), sft_path, dpo_path, conversations=conversations,
                                    pairs=pairs), log=log)
    return sft_path, dpo_path


def main() -> None:
    """Build the bundled sets if needed and print their paths and sizes."""
    for path in default_conversation_paths():
        with open(path, "rb") as handle:
            print(f"{path} ({sum(1 for _ in handle)} rows, {path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
