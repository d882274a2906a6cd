"""The shipped tokenizer's chat template: MiniMind's ChatML (e119db8), rendered by transformers, and adding it
left the tokenizer's fingerprint (which resumes compare) as it was; and the minimind3 family's (d65ef2c)."""

import json
import shutil
import subprocess

import pytest

from minimind.tokenizer import (
    DEFAULT_TOKENIZER_DIR,
    TokenizerLayoutError,
    load_tokenizer,
    minimind3_chat_template,
    require_chat_template,
    tokenizer_fingerprint,
)
from tests.project_tree import REPO_ROOT

CONFIG = DEFAULT_TOKENIZER_DIR / "tokenizer_config.json"
TOOLS = [{"name": "add", "description": "Add two numbers", "parameters": {"type": "object"}}]


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer()


def test_template_renders_minimind_chatml(shipped):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert shipped.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n")
    prompt = shipped.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_template_renders_a_system_turn_and_its_tools(shipped):
    messages = [{"role": "system", "content": "Be brief.", "functions": TOOLS},
                {"role": "user", "content": "1+2?"}, {"role": "assistant", "content": "3"}]
    text = shipped.apply_chat_template(messages, tokenize=False, tools=TOOLS)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(TOOLS[0], ensure_ascii=False) + "\n</tools>" in text
    assert text.count("<|im_start|>system") == 1
    assert text.endswith("<|im_start|>user\n1+2?<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n")


def test_template_is_upstreams_at_e119db8():
    """The same template text as MiniMind's ``model/tokenizer_config.json`` at e119db8 (recorded in the fixture by
    ``tests/upstream/make_sft_rows.py``)."""
    upstream = json.loads((REPO_ROOT / "tests" / "upstream" / "sft_rows.json").read_text(encoding="utf-8"))
    assert upstream["commit"] == "e119db8"
    assert json.loads(CONFIG.read_text())["chat_template"] == upstream["chat_template"]


def test_minimind3_template_is_upstreams_at_d65ef2c():
    """The same template text as MiniMind's ``model/tokenizer_config.json`` at d65ef2c (recorded in the fixture by
    ``tests/upstream/make_sft_rows.py``)."""
    upstream = json.loads((REPO_ROOT / "tests" / "upstream" / "sft_rows_minimind3.json").read_text(encoding="utf-8"))
    assert upstream["commit"] == "d65ef2c"
    assert minimind3_chat_template() == upstream["chat_template"]


def test_minimind3_template_renders_think_blocks_and_no_default_system(shipped):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "reasoning_content": "Two and two."}]
    assert shipped.apply_chat_template(messages, tokenize=False, chat_template=minimind3_chat_template()) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nhello<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nTwo and two.\n</think>\n\n4<|im_end|>\n")


def test_fingerprint_leaves_the_chat_template_out(shipped, tmp_path):
    shutil.copytree(DEFAULT_TOKENIZER_DIR, tmp_path, dirs_exist_ok=True)
    config = json.loads(CONFIG.read_text())
    config["chat_template"] = "{{ messages[0].content }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert tokenizer_fingerprint(load_tokenizer(tmp_path)) == tokenizer_fingerprint(shipped)


def test_shipped_fingerprint_is_the_one_before_the_template(shipped, tmp_path):
    """Checkpoints written before the template record the fingerprint of the files of the commit before the one
    that added it (found in git history, nothing hard-coded): the shipped tokenizer still has it."""
    relative = CONFIG.relative_to(REPO_ROOT).as_posix()
    log = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "--reverse", "--format=%H", "-S", '"chat_template"',
                          "--", relative], capture_output=True, text=True)
    if log.returncode != 0 or not log.stdout.split():
        pytest.skip("no git history of the tokenizer's config (not a checkout, or a shallow one)")
    before = f"{log.stdout.split()[0]}~1"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = f"{DEFAULT_TOKENIZER_DIR.relative_to(REPO_ROOT).as_posix()}/{name}"
        shown = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{before}:{path}"], check=True,
                               capture_output=True)
        (tmp_path / name).write_bytes(shown.stdout)
    old = load_tokenizer(tmp_path)
    assert not old.chat_template
    assert tokenizer_fingerprint(old) == tokenizer_fingerprint(shipped)


def test_a_tokenizer_without_a_chat_template_is_a_one_line_error(tmp_path):
    shutil.copytree(DEFAULT_TOKENIZER_DIR, tmp_path, dirs_exist_ok=True)
    config = json.loads(CONFIG.read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerLayoutError, match="no chat_template") as info:
        require_chat_template(load_tokenizer(tmp_path))
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    require_chat_template(load_tokenizer())
