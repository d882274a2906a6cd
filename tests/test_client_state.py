"""The client state's format version and the one upgrade of older layouts, against layouts written by hand as
the project's earlier versions wrote them; and the run identity's model family, absent from older ones."""

import pytest

from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.locate import CheckpointLocation
from minimind.errors import ConfigError
from minimind.model import MiniMindConfig
from minimind.training.checkpoints.client_state import FORMAT_KEY, FORMAT_VERSION, upgrade_client_state
from minimind.training.checkpoints.identity import RunIdentity, check_resume_fits
from minimind.training.position import TrainingPosition


def version_1(**entries) -> dict:
    """A client state as written before the format version was recorded: position, RNG, config and flags."""
    return {"position": {"epoch": 0, "step": 12, "sample_in_epoch": 96}, "rng_states": [],
            "resolved_ds_config": {"train_batch_size": 8}, "args": {"max_seq_len": 33}, **entries}


def test_a_version_1_state_gains_every_entry_added_since():
    upgraded = upgrade_client_state(version_1())
    assert upgraded[FORMAT_KEY] == FORMAT_VERSION
    for name in ("model_config", "tokenizer_fingerprint", "data", "schedule", "wandb_run_id"):
        assert upgraded[name] is None
    # the tokens its 12 steps trained on: steps x the saved global batch x the saved sequence length
    assert TrainingPosition.from_client_state(upgraded["position"]) == TrainingPosition(
        epoch=0, step=12, sample_in_epoch=96, tokens_seen=12 * 8 * 33)


def test_recorded_entries_of_version_1_are_kept_as_they_are():
    recorded = {"wandb_run_id": "abc", "schedule": {"total_steps": 40, "warmup_steps": 0},
                "position": {"epoch": 1, "step": 5, "sample_in_epoch": 0, "tokens_seen": 777}}
    upgraded = upgrade_client_state(version_1(**recorded))
    assert upgraded["wandb_run_id"] == "abc" and upgraded["schedule"] == recorded["schedule"]
    assert upgraded["position"]["tokens_seen"] == 777


def test_the_current_version_is_read_as_it_is_and_the_input_is_left_alone():
    current = {FORMAT_KEY: FORMAT_VERSION, "position": {"step": 3}, "schedule": None, "wandb_run_id": None}
    copy = dict(current)
    assert upgrade_client_state(current) == copy and current == copy
    original = version_1()
    upgrade_client_state(original)
    assert FORMAT_KEY not in original and "tokens_seen" not in original["position"]


def test_a_checkpoint_from_a_newer_version_is_one_line():
    with pytest.raises(CheckpointError, match=rf"format {FORMAT_VERSION + 1}, written by a newer version"):
        upgrade_client_state({FORMAT_KEY: FORMAT_VERSION + 1, "position": {}})


def test_a_checkpoint_without_a_model_family_resumes_as_minimind2(tmp_path):
    location = CheckpointLocation(tmp_path, "step_1")
    old = {"model_config": {key: value for key, value in MiniMindConfig().to_dict().items()
                            if key not in ("model_family", "head_dim")}}

    def run(**config) -> RunIdentity:
        return RunIdentity(MiniMindConfig(**config).to_dict(), "tokenizer", {})

    check_resume_fits(location, old, run())
    with pytest.raises(ConfigError, match="model_family minimind2 \\(checkpoint\\) vs minimind3 \\(this run\\)"):
        check_resume_fits(location, old, run(model_family="minimind3", hidden_size=512))
    recorded = {"model_config": MiniMindConfig(model_family="minimind3").to_dict()}
    with pytest.raises(ConfigError, match="num_key_value_heads 4 \\(checkpoint\\) vs 2"):
        check_resume_fits(location, recorded, run(model_family="minimind3", num_key_value_heads=2))
