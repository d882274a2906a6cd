"""What rank 0 says before the process group: the launcher, the machine, the demonstration, the batch."""

from minimind.model.precision import precision_of
from minimind.training.config import CPU_DEMO, RunConfig
from minimind.training.distributed.rank_print import print0
from minimind.training.distributed.world import LaunchedWorld
from minimind.training.run.inputs import RunInputs
from minimind.training.stages import STAGES


def announce(config: RunConfig, inputs: RunInputs, world: LaunchedWorld, fit_note: str | None) -> None:
    """Rank 0 states the launcher, the CPU threads and precision (on a CPU-only machine), a MoE model's slow
    path on a GPU, the demonstration settings and the corpus fit (if any), and the resolved batch arithmetic."""
    print0(world.describe())
    for note in inputs.host_notes:
        print0(note)
    if inputs.demo:
        stage = STAGES[config.stage.name]
        demo = {**CPU_DEMO, **stage.cpu_demo}
        full = ("--hidden_size 512 --num_hidden_layers 8 --max_seq_len 340 --batch_size 32 --accumulation_steps 8 "
                "--learning_rate 5e-4" if stage.name == "pretrain" else "--hidden_size 512 --num_hidden_layers 8")
        print0(f"CPU-only machine: short demonstration run ({', '.join(f'--{k} {v}' for k, v in demo.items())}); "
               f"pass {full} for MiniMind's full run")
    if fit_note is not None:
        print0(fit_note)
    batch, ds_config = inputs.batch, inputs.ds_config
    print0(
        f"batch: micro {batch.micro_batch} x accumulation {batch.accumulation} x data-parallel "
        f"{batch.data_parallel} = {batch.global_batch} samples of {config.data.max_seq_len} tokens per step; "
        f"grad_clip {batch.grad_clip:g}; precision {precision_of(ds_config)}; "
        f"ZeRO stage {ds_config.get('zero_optimization', {}).get('stage', 0)}; config {config.host.deepspeed_config}"
    )
