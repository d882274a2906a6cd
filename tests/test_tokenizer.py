"""The shipped tokenizer's layout, round trips, folder validation and the training command."""

import json
import shutil

import pytest
from transformers import AutoTokenizer

from minimind.tokenizer import (
    DEFAULT_TOKENIZER_DIR,
    SPECIAL_TOKENS,
    TokenizerLayoutError,
    load_tokenizer,
    tokenizer_fingerprint,
)
from minimind.tokenizer.train import main as train_main
from minimind.tokenizer.train import train_tokenizer

MIXED_TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界。今天天气很好，我们去公园散步吧。",
    "emoji 🚀🔥👍🏽 and 👨‍👩‍👧 families",
    "mixed 中文 and English, numbers 3.14159 and tabs\tand\nnewlines  double  spaces ",
    "def f(x):\n    return {'key': [1, 2, 3]}  # code",
    "",
    " leading space, trailing space ",
]


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer()


def test_shipped_tokenizer_has_minimind_layout(shipped):
    assert shipped.pad_token_id == 0 and shipped.unk_token_id == 0
    assert shipped.bos_token_id == 1 and shipped.eos_token_id == 2
    assert shipped.convert_ids_to_tokens([0, 1, 2]) == list(SPECIAL_TOKENS)
    assert len(shipped) == 6400
    config = json.loads((DEFAULT_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (DEFAULT_TOKENIZER_DIR / "tokenizer.json").stat().st_size < 1_000_000


def test_shipped_tokenizer_adds_no_special_tokens(shipped):
    ids = shipped("hello world")["input_ids"]
    assert ids == shipped.encode("hello world", add_special_tokens=False)
    assert not {0, 1, 2} & set(ids)


def test_autotokenizer_loads_the_same_tokenizer(shipped):
    auto = AutoTokenizer.from_pretrained(str(DEFAULT_TOKENIZER_DIR))
    assert auto.bos_token_id == 1 and auto.eos_token_id == 2 and auto.pad_token_id == 0
    assert tokenizer_fingerprint(auto) == tokenizer_fingerprint(shipped)
    assert auto.encode(MIXED_TEXTS[3]) == shipped.encode(MIXED_TEXTS[3])


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_round_trip(shipped, text):
    ids = shipped.encode(text)
    assert shipped.decode(ids) == text
    assert all(0 <= i < 6400 for i in ids)


def test_special_tokens_encode_to_their_ids(shipped):
    assert shipped.encode("<|im_start|>hi<|im_end|>")[0] == 1
    assert shipped.encode("<|im_start|>hi<|im_end|>")[-1] == 2


def test_fingerprint_ignores_runtime_padding_state(shipped):
    before = tokenizer_fingerprint(shipped)
    shipped(["a", "bb bb"], padding="max_length", max_length=8, truncation=True)
    assert tokenizer_fingerprint(shipped) == before


def test_missing_folder_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(TokenizerLayoutError, match="not found") as info:
        load_tokenizer(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_folder_without_tokenizer_files_is_rejected(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    shutil.copy(DEFAULT_TOKENIZER_DIR / "tokenizer.json", folder)
    with pytest.raises(TokenizerLayoutError, match="missing tokenizer_config.json") as info:
        load_tokenizer(folder)
    assert str(folder) in str(info.value)


def test_folder_without_the_special_tokens_is_rejected(tmp_path):
    folder = tmp_path / "other_layout"
    shutil.copytree(DEFAULT_TOKENIZER_DIR, folder)
    layout = json.loads((folder / "tokenizer.json").read_text())
    layout["added_tokens"][1]["content"] = "<s>"
    layout["model"]["vocab"]["<s>"] = layout["model"]["vocab"].pop("<|im_start|>")
    (folder / "tokenizer.json").write_text(json.dumps(layout))
    with pytest.raises(TokenizerLayoutError) as info:
        load_tokenizer(folder)
    message = str(info.value)
    assert message.startswith(f"{folder}: ") and "<|im_start|>" in message and "\n" not in message


def test_garbage_tokenizer_json_is_rejected(tmp_path):
    folder = tmp_path / "garbage"
    shutil.copytree(DEFAULT_TOKENIZER_DIR, folder)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerLayoutError, match="unreadable tokenizer.json") as info:
        load_tokenizer(folder)
    assert "\n" not in str(info.value)


def test_another_folder_with_the_layout_is_accepted(tmp_path):
    texts = ["some small corpus text about tokenizers and data"] * 20 + MIXED_TEXTS
    folder = train_tokenizer(texts, tmp_path / "tiny", vocab_size=300, show_progress=False)
    tiny = load_tokenizer(folder)
    assert tiny.convert_ids_to_tokens([0, 1, 2]) == list(SPECIAL_TOKENS)
    assert tiny.decode(tiny.encode(MIXED_TEXTS[2])) == MIXED_TEXTS[2]
    assert tokenizer_fingerprint(tiny) != tokenizer_fingerprint(load_tokenizer())
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert tiny.apply_chat_template(messages, tokenize=False) == load_tokenizer().apply_chat_template(
        messages, tokenize=False)  # a trained tokenizer renders conversations as the shipped one does


def test_training_command_writes_a_loadable_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": text}, ensure_ascii=False) for text in MIXED_TEXTS * 5))
    train_main(["--corpus", str(corpus), "--out", str(tmp_path / "cli"), "--vocab_size", "320"])
    trained = load_tokenizer(tmp_path / "cli")
    assert trained.bos_token_id == 1 and len(trained) <= 320
