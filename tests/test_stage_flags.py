"""MiniMind's fine-tuning command lines under ``deepspeed``: every flag of both versions of its
``train_full_sft.py`` and ``train_dpo.py`` is accepted, and with no flag each stage takes that version's defaults
(e119db8's for the minimind2 family, today's for minimind3)."""

import pytest

from minimind.training.arguments import PRECISION_DS_CONFIGS, parse_args, run_config
from minimind.training.stages import STAGES
from tests.test_minimind_flags import meanings

# The flags of trainer/train_full_sft.py and trainer/train_dpo.py, as their argparse declares them: (name, default).
# Read from jingyaogong/minimind at e119db8 and at d65ef2c (today's). --data_path, --device and --dtype are
# left out (a file that is not here, the launcher's device, and --dtype as pretraining's tests check it).
SHARED = {"save_dir": "../out", "num_workers": 8, "accumulation_steps": 1, "grad_clip": 1.0, "log_interval": 100,
          "num_hidden_layers": 8, "use_moe": 0, "from_resume": 0, "use_wandb": False, "use_compile": 0}
SFT_FLAGS = {**SHARED, "save_weight": "full_sft", "epochs": 2, "batch_size": 16, "save_interval": 1000,
             "from_weight": "pretrain", "wandb_project": "MiniMind-Full-SFT"}
DPO_FLAGS = {**SHARED, "save_weight": "dpo", "epochs": 1, "batch_size": 4, "learning_rate": 4e-8,
             "save_interval": 100, "max_seq_len": 1024, "from_weight": "full_sft", "wandb_project": "MiniMind-DPO"}
TRAINER_FLAGS = {
    ("sft", "e119db8"): {**SFT_FLAGS, "learning_rate": 1e-6, "hidden_size": 512, "max_seq_len": 340},
    ("sft", "d65ef2c"): {**SFT_FLAGS, "learning_rate": 1e-5, "hidden_size": 768, "max_seq_len": 768},
    ("dpo", "e119db8"): {**DPO_FLAGS, "hidden_size": 512, "beta": 0.1},
    ("dpo", "d65ef2c"): {**DPO_FLAGS, "hidden_size": 768, "beta": 0.15},
}
FAMILIES = {"e119db8": "minimind2", "d65ef2c": "minimind3"}


def command_line(flags: dict) -> list[str]:
    """A command line naming every flag with its value."""
    argv = []
    for name, value in flags.items():
        if isinstance(value, bool):
            argv += [f"--{name}"] if value else []
        else:
            argv += [f"--{name}", str(value)]
    return argv


def stage_meanings(config) -> dict:
    """What this project made of each flag (``test_minimind_flags.meanings``), with DPO's beta."""
    values = {**meanings(config), "beta": config.stage.beta}
    return {name: values[name] for name in values if name not in ("dtype", "data_path")}


# Where the project's default differs on purpose: its save folder sits in the working directory, and a rank
# reads its memory-mapped samples itself unless --num_workers asks for loader processes.
OWN_DEFAULTS = {"save_dir": "out", "num_workers": 0}


@pytest.mark.parametrize("name, version", sorted(TRAINER_FLAGS))
def test_each_stage_takes_its_trainers_defaults_and_every_flag(name, version):
    stage, expected = STAGES[name], TRAINER_FLAGS[name, version]
    family = ["--model_family", FAMILIES[version]]
    defaults = run_config(parse_args(family, stage), cpu_only=False, stage=stage)
    resolved = stage_meanings(defaults)
    assert {flag: resolved[flag] for flag in expected} == {**expected, **OWN_DEFAULTS}
    assert defaults.host.deepspeed_config == str(PRECISION_DS_CONFIGS["bf16"])  # MiniMind's --dtype bfloat16
    every = run_config(parse_args([*command_line(expected), *family], stage), cpu_only=False, stage=stage)
    assert {name: stage_meanings(every)[name] for name in expected} == expected
