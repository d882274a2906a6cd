"""Resuming a run: the checkpoint chosen, verified and checked against the run, then loaded.

``with_resume`` runs twice: before the process group (each rank alone, cheap checks) and after
it (the ranks together); ``resume_state`` loads the chosen tag into the engine.
"""

from dataclasses import replace

import torch.distributed as dist

from minimind.checkpoint.locate import read_client_state
from minimind.checkpoint.safe_load import checkpoint_loading
from minimind.data.pipeline import TrainingData
from minimind.training.checkpoints.identity import check_resume_fits, data_position_applies
from minimind.training.checkpoints.resume_choice import choose_resume, set_aside_newer_tags
from minimind.training.checkpoints.tags import load_training_state
from minimind.training.checkpoints.universal import layout_differs, refuse_without_auto_universal, universal_copy
from minimind.training.config import CheckpointSection
from minimind.training.distributed.rank_print import print0
from minimind.training.distributed.world import world_size
from minimind.training.loop.lr_schedule import follow_schedule
from minimind.training.parallel.autoep import check_resume_expert_parallel
from minimind.training.position import TrainingPosition
from minimind.training.run.inputs import RunInputs


def with_resume(checkpoint: CheckpointSection, inputs: RunInputs) -> RunInputs:
    """``inputs`` with the checkpoint to resume from, verified, fitting this run (model, tokenizer,
    expert-parallel layout), and the config to load it with.

    Before the process group every rank checks on its own what is cheap: file sizes, the checksum
    of the model-states file (read before the engine exists), the layout, the fit; bad input
    costs a second. After it the ranks verify together (checksums unless ``--verify_checkpoint
    size``) and agree on the tag, newer tags of this run are set aside, and a tag written at
    another world or ``ep_size`` is converted to universal. Collective then.
    """
    collective = dist.is_initialized()
    resume = choose_resume(inputs.resume_request, checksums=collective and checkpoint.verify_checkpoint == "checksum",
                           announce=collective)
    if resume is None:
        return replace(inputs, resume=None)
    with checkpoint_loading(trusted=checkpoint.trust_checkpoint):
        layout = layout_differs(resume, world_size(), inputs.ep_size)
        if layout is not None and not checkpoint.auto_universal:
            refuse_without_auto_universal(resume, layout)
        check_resume_fits(resume, read_client_state(resume), inputs.identity())
        if collective:
            set_aside_newer_tags(resume, inputs.save_dir / "checkpoints")
            if layout is not None:
                resume = universal_copy(resume, layout, print0)
        ds_config = inputs.ds_config
        if resume.is_universal:
            ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
        if layout is None or resume.is_universal:  # a layout still to convert is checked once converted
            check_resume_expert_parallel(resume.root, resume.tag, inputs.ep_size, ds_config)
    return replace(inputs, ds_config=ds_config, resume=resume)


def resume_state(checkpoint: CheckpointSection, engine, inputs: RunInputs,
                 data: TrainingData) -> tuple[TrainingPosition, str | None]:
    """Load the resume checkpoint, if any (its pickles unchecked only with ``--trust_checkpoint``):
    the position to continue from and the wandb run id. The learning rate follows this run's
    schedule from the resumed step on, other data restarts the epoch's position, and another
    global batch continues from the next micro-step boundary."""
    total_steps = data.total_steps
    if inputs.resume is None:
        return TrainingPosition(), None
    with checkpoint_loading(trusted=checkpoint.trust_checkpoint):
        client_state = load_training_state(engine, inputs.resume.root, inputs.resume.tag)
    position = TrainingPosition.from_client_state(client_state["position"])
    if "tokens_seen" not in client_state["position"]:  # a checkpoint from before tokens were counted
        position.tokens_seen = position.step * inputs.batch.global_batch * inputs.data.max_seq_len
    if not data_position_applies(client_state, inputs.identity()):
        position.sample_in_epoch = 0
    moved = position.align(inputs.batch.micro_batch * inputs.batch.data_parallel, data.sampler.samples_per_epoch)
    if moved:
        print0(f"the global batch differs from the checkpoint's: the data position moves on {moved} samples, to the "
               "next micro-step boundary")
    if "scheduler" not in inputs.ds_config:
        saved_total = (client_state.get("schedule") or {}).get("total_steps")
        if saved_total is not None and saved_total != total_steps:
            print0(f"the schedule's length changed from {saved_total} to {total_steps} steps: the learning rate "
                   f"follows the new cosine from step {position.step} on")
        follow_schedule(engine.lr_scheduler)
    print0(f"resumed from {inputs.resume.tag_dir}{' (universal)' if inputs.resume.is_universal else ''} at step "
           f"{position.step}, epoch {position.epoch}")
    return position, client_state.get("wandb_run_id")
