"""The command line of every stage's script (``pretrain_ds.py``, ``sft_ds.py``, ``dpo_ds.py``): parse, train, and
turn each way a run can fail into one line on stderr and its exit status."""

import sys

from deepspeed.accelerator import get_accelerator

from minimind.errors import UserInputError, first_line
from minimind.training.arguments import parse_args, run_config
from minimind.training.checkpoints.recorded_writes import CheckpointWriteError
from minimind.training.distributed.process_group import leave_process_group, lost_a_peer, tell_the_other_ranks
from minimind.training.distributed.stall_watchdog import LOST_A_PEER_STATUS
from minimind.training.distributed.world import global_rank
from minimind.training.loop.steps import NonFiniteStepsError
from minimind.training.stage_run import run_stage
from minimind.training.stages import Stage


def main(stage: Stage, argv: list[str] | None = None) -> int:
    """Parse ``stage``'s flags and train. Bad input is one line on stderr and exit status 2 (bad input on one node
    before the process group stops every rank with that node's line, through the rendezvous store); a run stopped
    for non-finite losses is one line and status 3, one whose checkpoint could not be written
    (disk full) one line and status 4; a rank that loses its peers (one died) one line and status 5."""
    args = None
    try:
        args = parse_args(argv, stage)
        run_stage(run_config(args, cpu_only=get_accelerator().device_name() == "cpu", stage=stage))
    except UserInputError as error:  # every rank raises it alike, or one node's input: the others are told
        report(stage, f"error: {error}")
        if args is not None:  # a bad flag is on every rank's command line: each stops on its own
            tell_the_other_ranks(error, args.rendezvous_timeout, args.rendezvous_report_interval)
        leave_process_group()
        return error.exit_status
    except NonFiniteStepsError as error:  # every rank stops together: rank 0 says why
        if global_rank() == 0:
            report(stage, f"stopped: {error}")
        return 3
    except CheckpointWriteError as error:
        report(stage, f"stopped: {error}")
        return 4
    except RuntimeError as error:  # DistError, or gloo's plain RuntimeError: another rank died
        if not lost_a_peer(error):
            raise
        report(stage, f"stopped: rank {global_rank()}: a collective with the other ranks failed ({first_line(error)}); "
               "another rank has probably died or stalled, see its own message")
        return LOST_A_PEER_STATUS
    return 0


def report(stage: Stage, message: str) -> None:
    """``{script}: {message}`` on stderr in one write, so that ranks sharing the launcher's
    pipe never interleave their lines."""
    sys.stderr.write(f"{stage.script}: {message}\n")
    sys.stderr.flush()
