"""Checkpoints verified before they are trusted: manifests, the choice of the tag to resume from,
pruning that counts only finished saves, and the ``verify`` command (one process, fabricated tags)."""

import json
import os
import random
from pathlib import Path

import pytest
import xxhash

from minimind.checkpoint.__main__ import main as checkpoint_main
from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.locate import MODEL_STATES, CheckpointLocation, locate_checkpoint
from minimind.checkpoint.manifest import (
    MANIFEST_NAME,
    READ_CHUNK,
    manifest_of_folder,
    read_manifest,
    tag_state_digest,
    verify_entries,
)
from minimind.training.checkpoints.resume_choice import ResumeRequest, choose_resume
from minimind.training.checkpoints.tags import prune_checkpoints
from minimind.training.checkpoints.universal import copy_of

WEIGHTS = "pretrain_64.pth"


def fabricate_tag(checkpoint_dir: Path, step: int, seed: int, manifest: bool = True, weights: bool = True) -> Path:
    """A tag folder of random files at awkward sizes (empty, one byte, across a read chunk), with
    the files ``locate_checkpoint`` looks for; with a manifest unless asked otherwise."""
    rng = random.Random(seed)
    tag_dir = checkpoint_dir / f"step_{step}"
    (tag_dir / "sub").mkdir(parents=True)
    sizes = {MODEL_STATES: 1013, "zero_pp_rank_0_mp_rank_00_optim_states.pt": READ_CHUNK + 7,
             "zero_pp_rank_1_mp_rank_00_optim_states.pt": 1, "sub/empty.pt": 0}
    if weights:
        sizes[WEIGHTS] = 333
    for name, size in sizes.items():
        (tag_dir / name).write_bytes(rng.randbytes(size))
    if manifest:
        manifest_of_folder(tag_dir, world_size=2)
    return tag_dir


def point_latest(checkpoint_dir: Path, step: int) -> None:
    (checkpoint_dir / "latest").write_text(f"step_{step}")


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def test_manifest_records_every_file_with_its_size_and_whole_file_checksum(tmp_path):
    tag_dir = fabricate_tag(tmp_path, 7, seed=1)
    recorded = {entry.name: entry for entry in read_manifest(tag_dir)}
    on_disk = sorted(p.relative_to(tag_dir).as_posix() for p in tag_dir.rglob("*")
                     if p.is_file() and p.name != MANIFEST_NAME)
    assert sorted(recorded) == on_disk
    for name, entry in recorded.items():
        data = (tag_dir / name).read_bytes()
        assert entry.size == len(data) and entry.checksum == xxhash.xxh3_128(data).hexdigest()
    assert json.loads((tag_dir / MANIFEST_NAME).read_text())["world_size"] == 2


@pytest.mark.parametrize("damage, checksums, expected", [
    (lambda p: p.unlink(), True, "is missing"),
    (lambda p: os.truncate(p, p.stat().st_size - 1), False,
     f"is truncated ({READ_CHUNK + 6} of {READ_CHUNK + 7} bytes)"),
    (lambda p: p.write_bytes(p.read_bytes() + b"x"), False, f"has {READ_CHUNK + 8} bytes, the manifest says"),
    (flip_a_byte, True, "fails its xxh3_128 checksum (same size, different bytes)"),
    (flip_a_byte, False, None),  # sizes only: a flipped byte goes unseen, as asked
])
def test_verification_names_the_first_bad_file_and_why(tmp_path, damage, checksums, expected):
    tag_dir = fabricate_tag(tmp_path, 7, seed=2)
    entries = read_manifest(tag_dir)
    assert verify_entries(tag_dir, entries, checksums=True) is None
    damage(tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    problem = verify_entries(tag_dir, entries, checksums)
    if expected is None:
        assert problem is None
    else:
        assert problem.startswith("zero_pp_rank_0_mp_rank_00_optim_states.pt ") and expected in problem


def test_from_resume_takes_the_newest_intact_tag_and_says_what_it_skipped(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        fabricate_tag(folder, step, seed=step)
    point_latest(folder, 30)
    fabricate_tag(folder, 40, seed=40, manifest=False)  # a save that crashed before its manifest
    flip_a_byte(folder / "step_30" / WEIGHTS)
    chosen = choose_resume(ResumeRequest(folder, None), checksums=True, announce=True)
    assert chosen == locate_checkpoint(folder / "step_20")
    line = capsys.readouterr().out.strip()
    assert line == ("resuming from step_20, the newest intact checkpoint; skipped step_40 (no manifest (an "
                    f"unfinished save)); step_30 ({WEIGHTS} fails its xxh3_128 checksum (same size, different bytes))")
    assert choose_resume(ResumeRequest(folder, None), checksums=False, announce=True).tag == "step_30"  # sizes only


def test_a_named_broken_tag_is_refused_naming_the_newest_intact_one(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        fabricate_tag(folder, step, seed=step)
    point_latest(folder, 30)
    (folder / "step_30" / "sub" / "empty.pt").unlink()
    (folder / "step_20" / MODEL_STATES).unlink()  # the client state lives in this file
    named = locate_checkpoint(folder / "step_30")
    with pytest.raises(CheckpointError) as refused:
        choose_resume(ResumeRequest(folder, named), checksums=True, announce=True)
    assert str(refused.value) == (f"{folder / 'step_30'}: sub/empty.pt is missing; the newest intact checkpoint "
                                  f"there is {folder / 'step_10'} (--resume_from {folder / 'step_10'})")


def test_a_new_tag_that_lost_its_manifest_is_refused_and_an_old_one_loads_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    fabricate_tag(folder, 10, seed=10)
    point_latest(folder, 10)
    (folder / "step_10" / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"step_10: no manifest \(its manifest is missing\); no other tag"):
        choose_resume(ResumeRequest(folder, locate_checkpoint(folder)), checksums=True, announce=True)
    (folder / "step_10" / WEIGHTS).unlink()  # as a checkpoint from before manifests (and the .pth in each tag)
    assert choose_resume(ResumeRequest(folder, None), checksums=True, announce=True).tag == "step_10"
    assert "written before checkpoints had manifests; it loads unverified" in capsys.readouterr().out


def test_from_resume_without_a_checkpoint_starts_fresh_but_never_over_broken_ones(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    assert choose_resume(ResumeRequest(folder, None), checksums=True, announce=True) is None
    fabricate_tag(folder, 10, seed=10, manifest=False)  # the first save crashed: still no checkpoint
    assert choose_resume(ResumeRequest(folder, None), checksums=True, announce=True) is None
    assert capsys.readouterr().out.count("no checkpoint in") == 2
    fabricate_tag(folder, 20, seed=20)
    point_latest(folder, 20)
    os.truncate(folder / "step_20" / MODEL_STATES, 10)
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from: step_20 .*; step_10 "):
        choose_resume(ResumeRequest(folder, None), checksums=True, announce=True)


def test_pruning_counts_only_finished_saves(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        fabricate_tag(folder, step, seed=step)
    fabricate_tag(folder, 40, seed=40, manifest=False)
    point_latest(folder, 30)
    prune_checkpoints(folder, keep=2)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["step_20", "step_30", "step_40"]


def test_verify_command_prints_one_line_per_tag(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    for step in (10, 20):
        fabricate_tag(folder, step, seed=step)
    point_latest(folder, 20)
    assert checkpoint_main(["verify", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step_20", "step_10"]
    assert all("verified (5 files" in line and "checksums" in line for line in lines)
    flip_a_byte(folder / "step_10" / MODEL_STATES)
    assert checkpoint_main(["verify", str(folder / "step_10")]) == 1
    assert capsys.readouterr().out.strip() == (f"step_10: BROKEN: {MODEL_STATES} fails its xxh3_128 checksum "
                                               "(same size, different bytes)")
    assert checkpoint_main(["verify", str(folder / "step_10"), "--verify_checkpoint", "size"]) == 0


def test_a_universal_copy_serves_only_the_exact_tag_it_was_made_from(tmp_path):
    folder = tmp_path / "checkpoints"
    source = fabricate_tag(folder, 20, seed=20)
    copy = fabricate_tag(folder / "universal", 20, seed=21, manifest=False)
    manifest_of_folder(copy, world_size=None, source=tag_state_digest(source))
    converted = CheckpointLocation(folder / "universal", "step_20")
    assert copy_of(converted, tag_state_digest(source))
    (source / WEIGHTS).write_bytes(b"retrained")  # the tag saved again at its step
    manifest_of_folder(source, world_size=2)
    assert not copy_of(converted, tag_state_digest(source))


def test_a_universal_copy_of_a_tag_from_before_manifests_is_reused_by_the_ranks_after_the_converter(tmp_path):
    """Without a manifest the source is named by its file listing: the ranks that take the lock after
    the converter find its copy (they do not convert again), and a resave at the step does not."""
    folder = tmp_path / "checkpoints"
    source = fabricate_tag(folder, 20, seed=20, manifest=False)
    digest = tag_state_digest(source)
    assert digest == tag_state_digest(source)  # the same for every rank that reads the tag
    copy = fabricate_tag(folder / "universal", 20, seed=21, manifest=False)
    manifest_of_folder(copy, world_size=None, source=digest)
    converted = CheckpointLocation(folder / "universal", "step_20")
    assert copy_of(converted, tag_state_digest(source))
    (source / WEIGHTS).write_bytes(b"saved again at this step, another size")
    assert not copy_of(converted, tag_state_digest(source))
