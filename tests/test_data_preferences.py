"""DPO samples: rows equal to e119db8's ``DPODataset`` and, for minimind3 rows, d65ef2c's (fixtures from upstream's
own code), and one-line errors for pairs whose prompts differ and for bad conversations."""

import json
from pathlib import Path

import pytest
import torch

from minimind.data.jsonl_reader import DataError
from minimind.data.minimind3_chat import EMPTY_THINK
from minimind.data.preferences import SIDES, PreferencePairs
from minimind.model.loss import IGNORE_INDEX
from tests.upstream.recorded_rows import MINIMIND3_ROWS, SFT_ROWS

MAX_SEQ_LEN = SFT_ROWS["dpo_max_length"] - 1


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs), encoding="utf-8")
    return path


def assert_upstream_rows(pairs: PreferencePairs, rows: list[dict]) -> None:
    """``pairs`` are upstream's ``DPODataset`` ``rows``: ``x_*``, and ``y_*`` where ``mask_*`` is set."""
    assert len(pairs) == len(rows)
    for index, row in enumerate(rows):
        for side in SIDES:
            mask = torch.tensor(row[f"mask_{side}"], dtype=torch.bool)
            assert pairs[index][f"{side}_input_ids"].tolist() == row[f"x_{side}"]
            assert torch.equal(pairs[index][f"{side}_targets"], torch.where(mask, torch.tensor(row[f"y_{side}"]),
                                                                            IGNORE_INDEX))


def test_rows_are_minimind_e119db8s(tokenizer, tmp_path):
    pairs = PreferencePairs(write_pairs(tmp_path / "dpo.jsonl", SFT_ROWS["pairs"]), tokenizer, MAX_SEQ_LEN)
    assert_upstream_rows(pairs, SFT_ROWS["dpo_rows"])
    assert pairs.num_cut == 1  # the long rejected answer


def test_minimind3_rows_are_minimind_d65ef2cs(tokenizer, tmp_path):
    """For each seed, pair i's rows are d65ef2c's ``DPODataset`` rows read with Python's ``random`` in the state
    of ``conversation_random(seed, i)``; among them, sides of one pair that kept and lost their empty think
    blocks (each side draws for itself)."""
    path = write_pairs(tmp_path / "dpo.jsonl", MINIMIND3_ROWS["pairs"])
    for seed, rows in zip(MINIMIND3_ROWS["seeds"], MINIMIND3_ROWS["dpo_rows"], strict=True):
        assert_upstream_rows(PreferencePairs(path, tokenizer, MINIMIND3_ROWS["dpo_max_length"] - 1, "minimind3",
                                             seed=seed), rows)
    kept = {tuple(EMPTY_THINK in tokenizer.decode(row[f"x_{side}"]) for side in SIDES)
            for rows in MINIMIND3_ROWS["dpo_rows"] for row in rows}
    assert {(True, False), (False, True)} <= kept


def test_minimind3_tool_calls_may_be_json_text(tokenizer, tmp_path):
    """Upstream's ``DPODataset`` cannot render ``tool_calls`` given as JSON text; here they are its list's rows."""
    call = [{"name": "get_weather", "arguments": {"city": "Rome"}}]
    prompt = [{"role": "user", "content": "Weather in Rome?"}]
    rows = {}
    for form in (call, json.dumps(call)):
        pair = {"chosen": [*prompt, {"role": "assistant", "content": "", "tool_calls": form}],
                "rejected": [*prompt, {"role": "assistant", "content": "No idea."}]}
        rows[type(form)] = PreferencePairs(write_pairs(tmp_path / "dpo.jsonl", [pair]), tokenizer, 64, "minimind3")[0]
    assert all(torch.equal(rows[list][key], rows[str][key]) for key in rows[list])
    assert "<tool_call>" in tokenizer.decode(rows[str]["chosen_input_ids"])


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
    path = write_pairs(tmp_path / "dpo.jsonl", [SFT_ROWS["pairs"][0], pair])
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
