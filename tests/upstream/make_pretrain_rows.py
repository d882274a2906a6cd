"""Record upstream MiniMind's own ``PretrainDataset`` rows as a test fixture (``tests/upstream/pretrain_rows.json``).

Upstream's ``dataset/lm_dataset.py`` is read at each commit the project follows (e119db8 for minimind2,
d65ef2c for minimind3) from a git clone or mirror of ``jingyaogong/minimind`` into a temporary module, with
a stand-in for the ``datasets`` package whose ``load_dataset('json', ...)`` reads the JSON Lines file as a
list of rows (all ``PretrainDataset`` uses of it; the ``features`` d65ef2c's ``SFTDataset`` passes are applied
by ``cast_turns``). Its ``PretrainDataset`` then cuts ``TEXTS`` with the project's shipped tokenizer at
``MAX_LENGTH``, and every row it returns is saved with the texts.
``tests/test_data_windows.py`` checks ``--packing 0``'s rows against them. Regenerate with::

    python -m tests.upstream.make_pretrain_rows --repo /path/to/minimind.git
"""

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from minimind.tokenizer.loader import load_tokenizer
from tests.upstream.make_reference import load_upstream

FIXTURE = Path(__file__).resolve().parent / "pretrain_rows.json"
COMMITS = {"minimind2": "e119db8", "minimind3": "d65ef2c"}
MAX_LENGTH = 12  # MiniMind's --max_seq_len: tokens per row
TEXTS = [
    "a",
    "The cat sat on the mat.",
    "Return the number of vowels in a string, counting y only at the end of a word.",
    "<|im_start|>MiniMind's pretraining texts carry their own markers<|im_end|>",
    "短句",
    "一段比较长的中文文本，用来检查截断：长度超过一行的文档只保留开头。",
]


def cast_turns(row: dict, features: dict) -> dict:
    """``row`` as ``datasets`` casts it to ``features`` whose columns are lists of turns with string fields
    (``{"conversations": [{"role": "string", ...}]}``, d65ef2c's ``SFTDataset``): every turn has each field, None
    where it had none; a field the features lack, or a value that is not a string, fails as the cast fails."""
    cast = {}
    for column, (fields,) in features.items():
        cast[column] = []
        for turn in row[column]:
            if set(turn) - set(fields) or any(not isinstance(value, str | None) for value in turn.values()):
                raise TypeError(f"Couldn't cast {turn} to {fields}")
            cast[column].append({name: turn.get(name) for name in fields})
    return cast


def datasets_stand_in() -> types.ModuleType:
    """A ``datasets`` module whose ``load_dataset('json', data_files=path, split='train', features=None)`` is the
    file's rows, cast to the ``features`` (built with its ``Features`` and ``Value``) when given."""
    module = types.ModuleType("datasets")

    def load_dataset(kind: str, data_files: str, split: str, features: dict | None = None) -> list[dict]:
        assert kind == "json" and split == "train"
        rows = [json.loads(line) for line in Path(data_files).read_text(encoding="utf-8").splitlines()]
        return rows if features is None else [cast_turns(row, features) for row in rows]

    module.load_dataset = load_dataset
    module.Features = dict
    module.Value = str  # Value("string") stands for the field's type by its name
    module.Sequence = lambda *args, **kwargs: None
    return module


def dataset_script_start(description: str) -> tuple[Path, PreTrainedTokenizerFast]:
    """What a script recording upstream's datasets starts from: the clone its ``--repo`` flag names, the
    ``datasets`` stand-in installed, and the project's shipped tokenizer."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repo", type=Path, required=True, help="git clone or mirror of jingyaogong/minimind")
    args = parser.parse_args()
    sys.modules["datasets"] = datasets_stand_in()
    return args.repo, load_tokenizer(None)


def main() -> None:
    """Write the fixture from the clone given by ``--repo``."""
    repo, tokenizer = dataset_script_start(__doc__.splitlines()[0])
    fixture = {"max_length": MAX_LENGTH, "texts": TEXTS, "commits": COMMITS, "rows": {}}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "pretrain.jsonl"
        data.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in TEXTS),
                        encoding="utf-8")
        for family, commit in COMMITS.items():
            module = load_upstream(repo, commit, Path(folder), "dataset/lm_dataset.py")
            dataset = module.PretrainDataset(str(data), tokenizer, max_length=MAX_LENGTH)
            fixture["rows"][family] = [[tensor.tolist() for tensor in dataset[index]] for index in range(len(TEXTS))]
    FIXTURE.write_text(json.dumps(fixture, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{FIXTURE.name}: {FIXTURE.stat().st_size} bytes")


if __name__ == "__main__":
    main()
