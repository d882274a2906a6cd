"""MiniMind's own command lines under ``deepspeed``: every flag of both versions of its ``train_pretrain.py``
(e119db8, the seed's; and today's, after the minimind-3 update) is accepted with its meaning, the stages
share one ``--save_dir`` through ``--save_weight`` and ``--from_weight``, and ``--dtype`` picks or checks the
precision."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pretrain_ds
from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.model.pth_weights import read_pth_state
from minimind.training.arguments import PRECISION_DS_CONFIGS, parse_args, run_config
from tests.launcher import FP32_CONFIG, TINY_MODEL, main_in_process, read_metrics, write_corpus

# Every flag of MiniMind's trainer/train_pretrain.py, as its argparse declares it: (name, type, default).
# Read from jingyaogong/minimind at e119db8 (lines 86-107) and at d65ef2c (today's, lines 85-106). Only
# three defaults differ between them: --epochs, --hidden_size and --data_path.
COMMON_FLAGS = [
    ("save_dir", str, "../out"),
    ("save_weight", str, "pretrain"),
    ("batch_size", int, 32),
    ("learning_rate", float, 5e-4),
    ("device", str, "cuda:0"),  # "cpu" where torch sees no CUDA
    ("dtype", str, "bfloat16"),
    ("num_workers", int, 8),
    ("accumulation_steps", int, 8),
    ("grad_clip", float, 1.0),
    ("log_interval", int, 100),
    ("save_interval", int, 1000),
    ("num_hidden_layers", int, 8),
    ("max_seq_len", int, 340),
    ("use_moe", int, 0),
    ("from_weight", str, "none"),
    ("from_resume", int, 0),
    ("use_wandb", bool, False),  # store_true
    ("wandb_project", str, "MiniMind-Pretrain"),
    ("use_compile", int, 0),
]
TRAINER_FLAGS = {
    "e119db8": [*COMMON_FLAGS, ("epochs", int, 1), ("hidden_size", int, 512),
                ("data_path", str, "../dataset/pretrain_hq.jsonl")],
    "d65ef2c": [*COMMON_FLAGS, ("epochs", int, 2), ("hidden_size", int, 768),
                ("data_path", str, "../dataset/pretrain_t2t_mini.jsonl")],
}


def command_line(version: str, **values) -> list[str]:
    """MiniMind's command line of ``version`` with every flag at its default, ``values`` replacing some."""
    argv = []
    for name, kind, default in TRAINER_FLAGS[version]:
        value = values.get(name, default)
        if kind is bool:
            argv += [f"--{name}"] if value else []
        else:
            argv += [f"--{name}", str(value)]
    return argv


def meanings(config) -> dict:
    """What this project made of each MiniMind flag, under the flag's name."""
    return {
        "save_dir": config.checkpoint.save_dir, "save_weight": config.checkpoint.save_weight,
        "epochs": config.schedule.epochs, "batch_size": config.batch.micro_batch,
        "learning_rate": config.batch.learning_rate, "dtype": config.host.deepspeed_config,
        "num_workers": config.data.loader_workers, "accumulation_steps": config.batch.accumulation,
        "grad_clip": config.batch.grad_clip, "log_interval": config.logging.log_interval,
        "save_interval": config.checkpoint.save_interval, "hidden_size": config.model.hidden_size,
        "num_hidden_layers": config.model.num_hidden_layers, "max_seq_len": config.data.max_seq_len,
        "use_moe": int(config.model.use_moe), "data_path": [str(path) for path in config.data.data_paths],
        "from_weight": config.checkpoint.from_weight, "from_resume": int(config.checkpoint.from_resume),
        "use_wandb": config.logging.use_wandb, "wandb_project": config.logging.wandb_project,
        "use_compile": int(config.model.compile),
    }


@pytest.mark.parametrize("version", sorted(TRAINER_FLAGS))
@pytest.mark.parametrize("cpu_only", [True, False])
def test_every_flag_of_minimind_is_accepted_with_its_meaning(version, cpu_only, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", lines=10)  # MiniMind's default file is not here
    config = run_config(parse_args(command_line(version, data_path=corpus)), cpu_only=cpu_only)
    expected = {name: default for name, _, default in TRAINER_FLAGS[version]}
    expected.update(dtype=str(PRECISION_DS_CONFIGS["bf16"]), data_path=[str(corpus)], from_weight=None)
    expected.pop("device")
    assert meanings(config) == expected
    assert not config.host.precision_timed  # --dtype chose it
    assert any(note.startswith("--device cuda:0: under DeepSpeed the launcher") for note in config.host.notes)


@pytest.mark.parametrize("family, hidden, epochs", [("minimind2", 512, 1), ("minimind3", 768, 2)])
def test_each_family_takes_its_trainers_defaults(family, hidden, epochs):
    """Without size or schedule flags, each family has its version's width and epochs (e119db8: 512 and 1,
    today's: 768 and 2); MiniMind's command lines name both, so they run alike either way."""
    config = run_config(parse_args(["--model_family", family]), cpu_only=False)
    assert (config.model.model_family, config.model.hidden_size, config.schedule.epochs) == (family, hidden, epochs)
    assert config.data.padded_rows == family  # --packing 0 cuts rows as that version's PretrainDataset
    built = MiniMindConfig(**config.model.config_kwargs)
    assert (built.model_family, built.hidden_size) == (family, hidden)


@pytest.mark.parametrize("dtype, precision", [("float32", "fp32"), ("float16", "fp16"), ("bfloat16", "bf16")])
def test_dtype_picks_the_precision_without_a_config(dtype, precision):
    config = run_config(parse_args(["--dtype", dtype]), cpu_only=True)
    assert config.host.deepspeed_config == str(PRECISION_DS_CONFIGS[precision]) and not config.host.precision_timed


def test_a_dtype_against_the_config_is_one_line(tmp_path, capsys):
    status = pretrain_ds.main(["--save_dir", str(tmp_path), "--dtype", "bfloat16", "--deepspeed_config",
                               str(FP32_CONFIG)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err
    assert f"--dtype bfloat16 contradicts {FP32_CONFIG}, which trains in fp32" in err
    config = run_config(parse_args(["--dtype", "float32", "--deepspeed_config", str(FP32_CONFIG)]), cpu_only=True)
    assert config.host.deepspeed_config == str(FP32_CONFIG)


@pytest.mark.parametrize("version", sorted(TRAINER_FLAGS))
def test_minimind_command_line_trains(version, tmp_path):
    """Each version's whole default command line with a data path runs a job; the size and batch flags that
    follow it make the job small enough for this machine (argparse keeps the last value)."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", lines=200)
    small = [*TINY_MODEL, "--batch_size", "4", "--accumulation_steps", "1", "--max_steps", "2",
             "--log_interval", "1", "--num_workers", "1", "--dtype", "float32"]
    family = ["--model_family", "minimind3"] if version == "d65ef2c" else []  # today's model, by one flag
    argv = [*command_line(version, save_dir=tmp_path / "out", data_path=corpus), *family, *small]
    result = main_in_process(argv, env={"MINIMIND_CACHE_DIR": str(tmp_path / "cache")})
    assert "--device cuda:0: under DeepSpeed" in result.stdout
    assert len(read_metrics(tmp_path / "out")) == 2 and (tmp_path / "out" / "pretrain_64.pth").is_file()


def test_stages_share_the_save_dir(tmp_path):
    """Pretraining publishes pretrain_64.pth; the next stage starts from it (``--from_weight pretrain``) in the
    same folder, is not refused as an overwrite, keeps its records in its own folder and publishes its own
    weights. With a learning rate of 0 they are the weights it started from, exactly."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", lines=200)
    out = tmp_path / "out"
    common = [*TINY_MODEL, "--data_path", str(corpus), "--batch_size", "4", "--deepspeed_config", str(FP32_CONFIG),
              "--save_dir", str(out)]
    env = {"MINIMIND_CACHE_DIR": str(tmp_path / "cache")}
    main_in_process([*common, "--max_steps", "3"], env=env)
    result = main_in_process([*common, "--max_steps", "1", "--from_weight", "pretrain", "--save_weight", "full_sft",
                              "--learning_rate", "0"], env=env)
    assert f"weights: {out / 'pretrain_64.pth'} (--from_weight pretrain)" in result.stdout
    assert (out / "full_sft" / "checkpoints" / "step_1").is_dir() and len(read_metrics(out / "full_sft")) == 1
    assert len(read_metrics(out)) == 3  # the pretraining run's records are untouched
    started, published = read_pth_state(out / "pretrain_64.pth"), read_pth_state(out / "full_sft_64.pth")
    assert started.keys() == published.keys()
    assert all(torch.equal(started[key], published[key]) for key in started)


@pytest.mark.parametrize("flags, named", [
    (["--from_weight", "pretrain"], "--from_weight pretrain: {out}/pretrain_64.pth: no such weights file"),
    (["--from_weight", "other"], "--from_weight other: {out}/other_64.pth: model.embed_tokens.weight has shape "
                                 "(6400, 32), the model expects (6400, 64)"),
    (["--save_weight", "../up"], "--save_weight: must be a file-name prefix"),
    (["--save_weight", "checkpoints"], "--save_weight checkpoints: a run keeps its own records"),
])
def test_bad_stage_flags_are_one_line(flags, named, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    narrower = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=2))
    torch.save(narrower.state_dict(), out / "other_64.pth")  # another model's weights under this one's name
    status = pretrain_ds.main([*TINY_MODEL, "--save_dir", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and named.format(out=out) in err, err


def test_a_run_starts_from_upstreams_pth_with_upstreams_loss(tmp_path):
    """Weights made by upstream's minimind3 code (``tests/upstream/make_start_weights.py``), written as its
    trainer writes a ``.pth``, start a run here through ``--from_weight``; its first step, one batch of every
    packed window, logs the loss upstream's forward gives on them (fp32, relative 1e-5)."""
    start = Path(__file__).parent / "upstream" / "start"
    record = json.loads((start / "minimind3.json").read_text(encoding="utf-8"))
    state = load_file(start / "minimind3.safetensors")
    copy, source = record["tied"]
    state[copy] = state[source].clone()
    out = tmp_path / "out"
    out.mkdir()
    torch.save({key: value.half() for key, value in state.items()}, out / "pretrain_32.pth")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in record["texts"]),
                      encoding="utf-8")
    main_in_process([*record["flags"], "--data_path", str(corpus), "--save_dir", str(out), "--from_weight",
                     "pretrain", "--save_weight", "continued", "--max_steps", "1", "--log_interval", "1",
                     "--deepspeed_config", str(FP32_CONFIG)], env={"MINIMIND_CACHE_DIR": str(tmp_path / "cache")})
    first = read_metrics(out / "continued")[0]
    assert first["step"] == 1 and first["loss"] == pytest.approx(record["upstream_loss"], rel=1e-5)
