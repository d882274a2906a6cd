"""The bundled conversation and preference sets, built from a small source tree written here: every answer is
its function's own first docstring paragraph, the pairs share their question, and the build is repeatable."""

import json
import textwrap

import pytest

from minimind.data.default_conversations import QUESTION, answered_names, build_sets, default_conversation_paths

SOURCE = textwrap.dedent('''
    """Module docstrings are not questions."""

    def shout(text):
        """Return the text in capital letters, with an exclamation mark appended at its end.

        Later paragraphs are left out of the answer."""

    def _private():
        """A private helper is never asked about, however long its docstring is."""

    class Counter:
        """Count hashable items as they are added, and report the most common ones on request."""

        def add(self, item):
            """Add one occurrence of the item to the counts kept so far by this counter."""

        def short(self):
            """Too short."""
''')


def write_package(root, modules: int):
    """A package ``pkg`` of ``modules`` copies of ``SOURCE`` (names differ by module, answers by a suffix)."""
    package = root / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for index in range(modules):
        (package / f"m{index}.py").write_text(SOURCE.replace("end.", f"end ({index}).")
                                              .replace("request.", f"request ({index}).")
                                              .replace("far by", f"far ({index}) by"))
    return package


def test_answers_are_each_names_first_docstring_paragraph(tmp_path):
    package = write_package(tmp_path, 1)
    found = dict(answered_names(package / "m0.py", "pkg.m0"))
    assert found == {
        "pkg.m0.shout": "Return the text in capital letters, with an exclamation mark appended at its end (0).",
        "pkg.m0.Counter": "Count hashable items as they are added, and report the most common ones on request (0).",
        "pkg.m0.Counter.add": "Add one occurrence of the item to the counts kept so far (0) by this counter.",
    }


def test_sets_are_minimind_formats_with_matching_questions(tmp_path):
    package = write_package(tmp_path, 3)  # 9 answered names
    sft, dpo = tmp_path / "out" / "sft.jsonl", tmp_path / "out" / "dpo.jsonl"
    assert build_sets([package], sft, dpo, conversations=5, pairs=3) == (5, 3)
    conversations = [json.loads(line)["conversations"] for line in sft.read_text().splitlines()]
    pairs = [json.loads(line) for line in dpo.read_text().splitlines()]
    answers = {}
    for path in sorted(package.glob("m*.py")):
        answers.update(answered_names(path, f"pkg.{path.stem}"))
    for user, assistant in conversations:
        name = user["content"][len("What does `"):-len("` do?")]
        assert user == {"role": "user", "content": QUESTION.format(name=name)}
        assert assistant == {"role": "assistant", "content": answers[name]}
    asked = {turns[0]["content"] for turns in conversations}
    for pair in pairs:
        assert pair["chosen"][0] == pair["rejected"][0] and pair["chosen"][0]["content"] not in asked
        name = pair["chosen"][0]["content"][len("What does `"):-len("` do?")]
        chosen, rejected = pair["chosen"][1]["content"], pair["rejected"][1]["content"]
        assert chosen == answers[name] != rejected
        assert sorted(rejected.split()) == sorted(chosen.split())  # the same words, scrambled
    again = tmp_path / "again"
    build_sets([package], again / "sft.jsonl", again / "dpo.jsonl", conversations=5, pairs=3)
    assert (again / "sft.jsonl").read_bytes() == sft.read_bytes()
    assert (again / "dpo.jsonl").read_bytes() == dpo.read_bytes()


def test_too_few_names_is_one_line(tmp_path):
    package = write_package(tmp_path, 1)
    with pytest.raises(ValueError, match="3 answered names under .*; 4 needed"):
        build_sets([package], tmp_path / "s.jsonl", tmp_path / "d.jsonl", conversations=2, pairs=2)


def test_the_cached_sets_are_built_once(tmp_path, monkeypatch):
    package = write_package(tmp_path, 2)
    monkeypatch.setattr("minimind.data.default_conversations.default_source_roots", lambda: [package])
    sft, dpo = default_conversation_paths(tmp_path / "cache", conversations=3, pairs=2)
    built = sft.stat().st_mtime_ns, dpo.stat().st_mtime_ns
    assert default_conversation_paths(tmp_path / "cache", conversations=3, pairs=2) == (sft, dpo)
    assert (sft.stat().st_mtime_ns, dpo.stat().st_mtime_ns) == built
    assert len(sft.read_text().splitlines()) == 3 and len(dpo.read_text().splitlines()) == 2
