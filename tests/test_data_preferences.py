"""DPO samples: rows equal to e119db8's ``DPODataset`` (fixture from upstream's own code), and one-line errors for
pairs whose prompts differ and for bad conversations."""

import json
from pathlib import Path

import pytest
import torch

from minimind.data.jsonl_reader import DataError
from minimind.data.preferences import PreferencePairs
from minimind.model.loss import IGNORE_INDEX
from minimind.tokenizer import load_tokenizer

FIXTURE = json.loads((Path(__file__).resolve().parent / "upstream" / "sft_rows.json").read_text(encoding="utf-8"))
MAX_SEQ_LEN = FIXTURE["dpo_max_length"] - 1


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs), encoding="utf-8")
    return path


def test_rows_are_minimind_e119db8s(tokenizer, tmp_path):
    pairs = PreferencePairs(write_pairs(tmp_path / "dpo.jsonl", FIXTURE["pairs"]), tokenizer, MAX_SEQ_LEN)
    assert len(pairs) == len(FIXTURE["dpo_rows"])
    for index, row in enumerate(FIXTURE["dpo_rows"]):
        for side in ("chosen", "rejected"):
            mask = torch.tensor(row[f"mask_{side}"], dtype=torch.bool)
            assert pairs[index][f"{side}_input_ids"].tolist() == row[f"x_{side}"]
            assert torch.equal(pairs[index][f"{side}_targets"], torch.where(mask, torch.tensor(row[f"y_{side}"]),
                                                                            IGNORE_INDEX))
    assert pairs.num_cut == 1  # the long rejected answer


CHOSEN = [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "Yes."}]


@pytest.mark.parametrize("pair, message", [
    ({"chosen": CHOSEN, "rejected": [{"role": "user", "content": "Is grass green?"}, CHOSEN[1]]},
     "chosen and rejected differ before their last assistant turn"),
    ({"chosen": CHOSEN, "rejected": [{"role": "system", "content": "Be rude."}, *CHOSEN]},
     "chosen and rejected differ before their last assistant turn"),
    ({"chosen": CHOSEN, "rejected": CHOSEN[:1]}, '"rejected" has no assistant turn'),
    ({"chosen": [{"role": "human", "content": "x"}, CHOSEN[1]], "rejected": CHOSEN}, "\"chosen\" turn 1 has role"),
    ({"chosen": CHOSEN}, 'expected "rejected"'),
])
def test_bad_pairs_are_one_line_errors_naming_file_and_line(tokenizer, tmp_path, pair, message):
    path = write_pairs(tmp_path / "dpo.jsonl", [FIXTURE["pairs"][0], pair])
    with pytest.raises(DataError) as info:
        PreferencePairs(path, tokenizer, MAX_SEQ_LEN)
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_pairs_may_differ_in_their_last_answer_only(tokenizer, tmp_path):
    multi = [*CHOSEN, {"role": "user", "content": "Why?"}]
    pair = {"chosen": [*multi, {"role": "assistant", "content": "Scattering."}],
            "rejected": [*multi, {"role": "assistant", "content": "Magic."}]}
    sample = PreferencePairs(write_pairs(tmp_path / "dpo.jsonl", [pair]), tokenizer, 128)[0]
    shared = int((sample["chosen_input_ids"] != sample["rejected_input_ids"]).nonzero()[0]) - 1
    assert torch.equal(sample["chosen_targets"][:shared], sample["rejected_targets"][:shared])
    assert (sample["chosen_targets"][:shared] != IGNORE_INDEX).any()  # the first answer is trained too
