"""The training side's public API: what code outside ``minimind.training`` (the benchmarks in ``bench/``)
may import from it. Everything else in ``minimind.training`` is internal and may move; a move
changes this file's imports, not its names.

Starting and using a job's process group:

- ``init_process_group``: the process group, whichever launcher started the job (or none);
- ``free_local_port``: a free TCP port on this host (a launch's ``--master_port``);
- ``barrier``, ``all_reduce``, ``all_gather``, ``all_gather_object``: the collectives the trainer uses;
- ``accelerator_device``: this rank's device; ``print0``: print on rank 0 only;
- ``set_cpu_threads``: torch's threads per rank as the trainer sets them (returns the line saying so).

The trainer's flags, resolved as ``pretrain_ds.py`` resolves them:

- ``parse_trainer_flags``: ``pretrain_ds.py``'s flag parser; ``run_config``: the ``RunConfig`` the parsed
  flags resolve to, as the trainer resolves them; ``resolved_flags``: the flags with every default filled
  in (without ``run_config``'s CPU threads and timing); ``cpu_ds_config``: the DeepSpeed config a CPU-only
  run picks; ``model_config_kwargs``: the ``MiniMindConfig`` arguments the flags ask for.

The DeepSpeed engine and its optimizer step:

- ``resolve_ds_config``: a DeepSpeed JSON config checked and completed, with its ``BatchPlan``
  (micro-batch, accumulation, data-parallel ranks, gradient clipping);
- ``resolve_expert_parallel``, ``install_aux_loss``: AutoEP's size from the config and flags, and
  MiniMind's aux loss hooked onto the engine's AutoEP model;
- ``train_step``: one optimizer step of the engine over a list of micro-batches (a ``StepResult``).

What a run leaves in its folder: ``RUN_SETTINGS_FILE``, the run's command and resolved settings (read it
with ``minimind.report.read_run_settings``).
"""

from minimind.training.arguments import cpu_ds_config, model_config_kwargs, resolved_flags, run_config
from minimind.training.arguments import parse_args as parse_trainer_flags
from minimind.training.distributed.collectives import (
    accelerator_device,
    all_gather,
    all_gather_object,
    all_reduce,
    barrier,
)
from minimind.training.distributed.process_group import free_local_port, init_process_group
from minimind.training.distributed.rank_print import print0
from minimind.training.ds_config.load import BatchPlan, resolve_ds_config
from minimind.training.hardware.cpu import set_cpu_threads
from minimind.training.loop.objective import StepResult, train_step
from minimind.training.parallel.autoep import install_aux_loss, resolve_expert_parallel
from minimind.training.run_dir.files import RUN_SETTINGS_FILE

__all__ = [
    "RUN_SETTINGS_FILE",
    "BatchPlan",
    "StepResult",
    "accelerator_device",
    "all_gather",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "cpu_ds_config",
    "free_local_port",
    "init_process_group",
    "install_aux_loss",
    "model_config_kwargs",
    "parse_trainer_flags",
    "print0",
    "resolve_ds_config",
    "resolve_expert_parallel",
    "resolved_flags",
    "run_config",
    "set_cpu_threads",
    "train_step",
]
