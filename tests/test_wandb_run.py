"""``--use_wandb`` as a new user without a login runs it: offline, the run's summary holding the final
training and validation losses, the samples as a table, and a resume continuing the same run id.

The offline run file (``run-{id}.wandb``) is read here record by record: a LevelDB-style log of
protobuf ``Record``s after a 7-byte header, in 32 KiB blocks whose chunks carry a 7-byte header
(checksum, length, type: 1 whole record, 2/3/4 first/middle/last piece).
"""

import json
import sys
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from tests.launcher import free_local_port, read_eval_rows, read_metrics, read_samples, run_job, short_training

BLOCK = 32 * 1024
FILE_HEADER = 7  # ":W&B", a 2-byte magic number, a version byte
CHUNK_HEADER = 7
RECORD_ENDS = (1, 4)  # a whole record, or the last piece of one


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run file, in order."""
    data, position, pending, records = path.read_bytes(), FILE_HEADER, b"", []
    while position + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        length = int.from_bytes(data[position + 4:position + 6], "little")
        kind = data[position + 6]
        if left_in_block < CHUNK_HEADER or (length == 0 and kind == 0):  # the block's zero padding
            position += left_in_block
            continue
        pending += data[position + CHUNK_HEADER:position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind in RECORD_ENDS:
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def run_summary(path: Path) -> tuple[str, dict]:
    """The run id and the final summary (key: JSON value) of an offline run file."""
    run_id, summary = None, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
    return run_id, summary


def train(save_dir: Path, corpus: Path, eval_corpus: Path, env: dict, max_steps: int) -> None:
    """One process, no launcher, ``--use_wandb`` with evaluation and samples every 2 steps; resumes when it can."""
    port = free_local_port()
    run_job([sys.executable, "pretrain_ds.py", *short_training(Path("ds_configs/zero2_fp32.json"), max_steps),
             "--data_path", str(corpus), "--eval_data_path", str(eval_corpus), "--sample_prompts", "default",
             "--sample_tokens", "4", "--save_interval", "2", "--log_interval", "1", "--use_wandb",
             "--from_resume", "1", "--save_dir", str(save_dir)], port, env={**env, "MASTER_PORT": str(port)})


def test_an_offline_wandb_run_holds_the_losses_and_samples_and_survives_a_resume(
        tmp_path, corpus, eval_corpus, launch_env_vars):
    env = {**launch_env_vars, "WANDB_API_KEY": "", "WANDB_MODE": "", "WANDB_CONFIG_DIR": str(tmp_path / "config"),
           "WANDB_CACHE_DIR": str(tmp_path / "cache")}
    save_dir = tmp_path / "run"
    train(save_dir, corpus, eval_corpus, env, max_steps=2)
    train(save_dir, corpus, eval_corpus, env, max_steps=3)
    runs = sorted((save_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    (first_id, _), (second_id, summary) = run_summary(runs[0]), run_summary(runs[1])
    assert first_id == second_id  # the resume continued the run
    assert [row["step"] for row in read_eval_rows(save_dir)] == [2, 3]  # step 2, evaluated, not again on resume
    assert summary["loss"] == pytest.approx(read_metrics(save_dir)[-1]["loss"], rel=1e-12)
    assert summary["val_loss"] == pytest.approx(read_eval_rows(save_dir)[-1]["val_loss"], rel=1e-12)
    table = json.loads((runs[1].parent / "files" / summary["samples/path"]).read_text())
    samples = read_samples(save_dir)
    assert table["columns"] == ["step", "prompt", "text"]
    assert table["data"] == [[row["step"], row["prompt"], row["text"]] for row in samples if row["step"] == 3]
