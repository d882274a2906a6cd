"""Resuming a run: the checkpoint chosen, verified and checked against the run, then loaded.

``check_resume_alone`` runs before the process group (each rank alone, cheap checks) and
``agree_on_resume`` after it (the ranks together); ``resume_state`` loads the chosen tag into the engine.
"""

from dataclasses import replace

from minimind.checkpoint.locate import CheckpointLocation, read_client_state
from minimind.checkpoint.safe_load import checkpoint_loading
from minimind.data.pipeline import TrainingData
from minimind.training.checkpoints.client_state import upgrade_client_state
from minimind.training.checkpoints.identity import check_resume_fits, data_position_applies
from minimind.training.checkpoints.manager import CheckpointManager
from minimind.training.checkpoints.resume_choice import choose_resume, set_aside_newer_tags
from minimind.training.checkpoints.universal import layout_differs, refuse_without_auto_universal, universal_copy
from minimind.training.config import CheckpointSection
from minimind.training.distributed.rank_print import print0
from minimind.training.distributed.world import world_size
from minimind.training.loop.lr_schedule import follow_schedule
from minimind.training.parallel.autoep import check_resume_expert_parallel
from minimind.training.position import TrainingPosition
from minimind.training.run.inputs import RunInputs


def check_resume_alone(checkpoint: CheckpointSection, inputs: RunInputs) -> RunInputs:
    """Before the process group, each rank on its own: ``inputs`` with the checkpoint to resume from and the
    config to load it with, after the checks that are cheap: file sizes, the checksum of the model-states
    file (read before the engine exists), the expert-parallel layout, the fit to this run. Bad input costs
    a second and one line."""
    resume = choose_resume(inputs.resume_request, checksums=False, announce=False)
    if resume is None:
        return replace(inputs, resume=None)
    with checkpoint_loading(trusted=checkpoint.trust_checkpoint):
        layout = checked_layout(checkpoint, resume, inputs)
        ds_config = config_to_load(inputs.ds_config, resume)
        if layout is None or resume.is_universal:  # a layout still to convert is checked once converted
            check_resume_expert_parallel(resume.root, resume.tag, inputs.ep_size, ds_config)
    return replace(inputs, ds_config=ds_config, resume=resume)


def agree_on_resume(checkpoint: CheckpointSection, inputs: RunInputs) -> RunInputs:
    """After the process group, the ranks together: the tag every rank verified (checksums unless
    ``--verify_checkpoint size``), the newer tags of this run set aside, and a tag written at another world
    or ``ep_size`` converted to universal once; ``inputs`` with that checkpoint and the config to load it
    with. Collective."""
    resume = choose_resume(inputs.resume_request, checksums=checkpoint.verify_checkpoint == "checksum",
                           announce=True)
    if resume is None:
        return replace(inputs, resume=None)
    with checkpoint_loading(trusted=checkpoint.trust_checkpoint):
        layout = checked_layout(checkpoint, resume, inputs)
        set_aside_newer_tags(resume, inputs.save_dir / "checkpoints")
        if layout is not None:
            resume = universal_copy(resume, layout, print0)
        ds_config = config_to_load(inputs.ds_config, resume)
        if layout is None or resume.is_universal:
            check_resume_expert_parallel(resume.root, resume.tag, inputs.ep_size, ds_config)
    return replace(inputs, ds_config=ds_config, resume=resume)


def checked_layout(checkpoint: CheckpointSection, resume: CheckpointLocation, inputs: RunInputs) -> str | None:
    """How ``resume``'s layout differs from this run's (another world or ``ep_size``; None: the same), refused
    without ``--auto_universal``; and the checkpoint checked to fit this run (model, tokenizer, data)."""
    layout = layout_differs(resume, world_size(), inputs.ep_size)
    if layout is not None and not checkpoint.auto_universal:
        refuse_without_auto_universal(resume, layout)
    check_resume_fits(resume, upgrade_client_state(read_client_state(resume)), inputs.identity())
    return layout


def config_to_load(ds_config: dict, resume: CheckpointLocation) -> dict:
    """The DeepSpeed config that loads ``resume``: a universal checkpoint needs ``load_universal``."""
    if not resume.is_universal:
        return ds_config
    return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}


def resume_state(checkpoint: CheckpointSection, checkpoints: CheckpointManager, inputs: RunInputs,
                 data: TrainingData) -> tuple[TrainingPosition, str | None]:
    """Load the resume checkpoint, if any, through ``checkpoints`` (its pickles unchecked only with
    ``--trust_checkpoint``): the position to continue from and the wandb run id. The learning rate follows
    this run's schedule from the resumed step on, other data restarts the epoch's position, and another
    global batch continues from the next micro-step boundary."""
    total_steps = data.total_steps
    if inputs.resume is None:
        return TrainingPosition(), None
    with checkpoint_loading(trusted=checkpoint.trust_checkpoint):
        client_state = checkpoints.load(inputs.resume)
    position = TrainingPosition.from_client_state(client_state["position"])
    if not data_position_applies(client_state, inputs.identity()):
        position.sample_in_epoch = 0
    moved = position.align(inputs.batch.micro_batch * inputs.batch.data_parallel, data.sampler.samples_per_epoch)
    if moved:
        print0(f"the global batch differs from the checkpoint's: the data position moves on {moved} samples, to the "
               "next micro-step boundary")
    if "scheduler" not in inputs.ds_config:
        saved_total = (client_state["schedule"] or {}).get("total_steps")
        if saved_total is not None and saved_total != total_steps:
            print0(f"the schedule's length changed from {saved_total} to {total_steps} steps: the learning rate "
                   f"follows the new cosine from step {position.step} on")
        follow_schedule(checkpoints.engine.lr_scheduler)
    print0(f"resumed from {inputs.resume.tag_dir}{' (universal)' if inputs.resume.is_universal else ''} at step "
           f"{position.step}, epoch {position.epoch}")
    return position, client_state["wandb_run_id"]
