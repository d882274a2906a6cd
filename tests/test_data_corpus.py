"""The default-corpus builder on a small tree of Python files (the real corpus is too slow for tests)."""

import json
import textwrap

import pytest

from minimind.data import JsonlTextReader, build_corpus, default_corpus_path
from minimind.data import default_corpus as default_corpus_module


def paragraph(word: str, chars: int = 300) -> str:
    """A paragraph of about ``chars`` characters that names ``word`` (easy to find in the output)."""
    return textwrap.fill(f"{word} " + "lorem ipsum dolor sit amet " * (chars // 27), 70)


def write_tree(root):
    """Write a small package whose docstrings exercise every extraction rule."""
    long_module_doc = "\n\n".join([paragraph("MODULE_A"), "too short", paragraph("MODULE_B"),
                                   paragraph("MODULE_HUGE", 1600), paragraph("MODULE_C")])
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "alpha.py").write_text("\n".join([
        f'"""{long_module_doc}"""',
        "if True:",
        "    def guarded():",
        f'        """{paragraph("GUARDED")}"""',
        "class Thing:",
        f'    """{paragraph("CLASS")}"""',
        "    async def method(self):",
        f'        """{paragraph("METHOD")}"""',
        "    def short(self):",
        '        """Too short to keep."""',
        "try:",
        "    pass",
        "except ValueError:",
        "    def handler():",
        f'        """{paragraph("HANDLER")}"""',
        "def with_lambda():",
        f'    return lambda: """{paragraph("NOT_A_DOCSTRING")}"""',
    ]) + "\n")
    (root / "pkg" / "beta.py").write_text(f'"""{paragraph("CLASS")}"""\n\ndef late():\n    """{paragraph("BETA")}"""\n')
    (root / "pkg" / "broken.py").write_text('def broken(:\n    """never parsed"""\n')
    (root / "pkg" / "notes.txt").write_text(paragraph("NOT_PYTHON"))
    for skipped in ("tests", "__pycache__", "site-packages"):
        (root / "pkg" / skipped).mkdir()
        (root / "pkg" / skipped / "skipped.py").write_text(f'"""{paragraph("SKIPPED")}"""\n')


EXPECTED_ORDER = ["MODULE_A", "MODULE_B", "MODULE_C", "GUARDED", "CLASS", "METHOD", "HANDLER", "BETA"]


def read_texts(path):
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_extraction_rules_and_order(tmp_path):
    write_tree(tmp_path / "src")
    out = tmp_path / "corpus.jsonl"
    count = build_corpus([tmp_path / "src"], out, workers=2, show_progress=False)
    texts = read_texts(out)
    assert count == len(texts) == len(EXPECTED_ORDER)
    assert [text.split()[0] for text in texts] == EXPECTED_ORDER  # sorted files, source order, deduplicated
    assert all(200 <= len(text) <= 1500 for text in texts)
    assert list(JsonlTextReader(out)) == texts
    assert not list(out.parent.glob(".*.tmp"))


def test_output_is_deterministic_for_any_worker_count(tmp_path):
    write_tree(tmp_path / "src")
    build_corpus([tmp_path / "src"], tmp_path / "one.jsonl", workers=1, show_progress=False)
    build_corpus([tmp_path / "src"], tmp_path / "two.jsonl", workers=2, show_progress=False)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


def test_no_texts_is_an_error_and_leaves_no_file(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "empty.py").write_text('"""short"""\n')
    with pytest.raises(ValueError, match="no docstring pieces"):
        build_corpus([tmp_path / "src"], tmp_path / "out" / "corpus.jsonl", workers=1, show_progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_default_corpus_is_built_once_and_keyed_by_versions(tmp_path, monkeypatch):
    write_tree(tmp_path / "src")
    monkeypatch.setattr(default_corpus_module, "default_source_roots", lambda: [tmp_path / "src"])
    monkeypatch.setenv("MINIMIND_CACHE_DIR", str(tmp_path / "cache"))
    path = default_corpus_path(show_progress=False)
    assert path.parent == tmp_path / "cache"
    assert "torch" in path.name and "transformers" in path.name and "py" in path.name
    built_at = path.stat().st_mtime_ns
    assert default_corpus_path(show_progress=False) == path
    assert path.stat().st_mtime_ns == built_at
