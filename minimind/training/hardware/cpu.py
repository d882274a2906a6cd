"""What a rank makes of its processor: its share of the node's cores (the tokenizing processes it
starts, and on a machine without an accelerator torch's thread count), and the precision a CPU
run trains in when no DeepSpeed config is named.

Several ranks on one node each default to as many threads as the node has cores, so two ranks
on two cores run four busy threads and slow each other down; a launcher that sets none leaves
that to us.

bf16 is about 20x slower than fp32 where the processor emulates it, and where it has bf16
instructions the gain depends on the model's size: on the project's AMD EPYC (avx512_bf16) a
bf16 DeepSpeed run of the 512 x 8 model trained 2.3x faster than fp32, the 128 x 4 CPU
demonstration 0.92x as fast. A bare matmul does not tell the two apart (3.6x and 4.1x faster
in bf16 at their MLP shapes); one decoder block's forward and backward does (2.6x and 0.74x).
So a CPU run with bf16 instructions times one block of its own model in both precisions.
"""

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from minimind.model.config import MiniMindConfig
from minimind.model.modeling import MiniMindBlock
from minimind.model.rope import rope_tables

# The number of ranks on this node, as each launcher states it: DeepSpeed, torchrun, Open MPI,
# MPICH, Slurm.
LOCAL_SIZE_VARIABLES = ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                        "SLURM_NTASKS_PER_NODE")
# /proc/cpuinfo flags (x86) and features (Arm) of bf16 instructions: AMX tiles, AVX512 dot products, Arm BFMMLA.
BF16_INSTRUCTION_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
# bf16 has to beat fp32 by this much on the measured block to be chosen: a DeepSpeed bf16 step adds
# the fp32 master-weight update and casts that the block leaves out.
BF16_MIN_SPEEDUP = 1.2
# Rows of the measured block: enough to load the cores as a micro-batch does, few enough to take
# well under a second at MiniMind's sizes.
MEASURED_TOKENS = 2048


def ranks_on_this_node(environ: Mapping[str, str] | None = None) -> int:
    """How many ranks the launcher started on this node (1 when it does not say)."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a launcher's binding narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores_per_rank(environ: Mapping[str, str] | None = None) -> int:
    """This rank's share of the node's cores (at least 1): the cores it may run on, divided among the ranks of
    its node, unless a launcher already bound it to fewer cores than the node has (Slurm's ``--cpus-per-task``,
    DeepSpeed's ``--bind_cores_to_rank``, ``numactl``): then those cores are its own."""
    cores = available_cores()
    if cores < node_cores():
        return cores
    return max(cores // ranks_on_this_node(environ), 1)


def node_cores() -> int:
    """The cores of this node, whether this process may run on them or not."""
    return os.cpu_count() or 1


def set_cpu_threads(environ: Mapping[str, str] | None = None) -> str:
    """Set torch's intra-op threads to this rank's share of the cores; returns the line that says so.

    ``OMP_NUM_THREADS``, when set (by the user or a launcher's core binding), is kept as it is.
    """
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(int(environ["OMP_NUM_THREADS"]), 1)
        why = "OMP_NUM_THREADS"
    else:
        threads = cores_per_rank(environ)
        ranks = ranks_on_this_node(environ)
        why = f"{available_cores()} cores / {ranks} rank{'s' if ranks > 1 else ''} on this node"
    torch.set_num_threads(threads)
    return f"CPU threads: {threads} per rank ({why})"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a CPU run picks and the reason it gives."""

    precision: str  # "bf16" or "fp32"
    reason: str


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The instruction-set flags ``/proc/cpuinfo`` lists (x86 ``flags``, Arm ``Features``); empty where absent."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def block_seconds(config: MiniMindConfig, dtype: torch.dtype, sequences: int, seq_len: int) -> float:
    """Best of two timed forward+backward passes of one decoder block of ``config`` in ``dtype``
    over ``sequences`` x ``seq_len`` tokens, after one untimed pass."""
    with torch.random.fork_rng(devices=[]):  # the run's own random streams are left as they were
        torch.manual_seed(0)
        block = MiniMindBlock(0, config).to(dtype)
        hidden = torch.randn(sequences, seq_len, config.hidden_size, dtype=dtype, requires_grad=True)
    tables = tuple(table.to(dtype) for table in rope_tables(config.head_dim, config.rope_theta, seq_len,
                                                            config.yarn_scaling))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        block(hidden, tables).float().square().mean().backward()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def choose_cpu_precision(config: MiniMindConfig, micro_batch: int, seq_len: int, cpuinfo: str | None = None,
                         measure=block_seconds) -> PrecisionChoice:
    """bf16 where the processor has bf16 instructions and one decoder block of ``config`` trains
    ``BF16_MIN_SPEEDUP`` times faster in bf16 than in fp32 (timed on up to ``MEASURED_TOKENS`` of
    the run's ``micro_batch`` x ``seq_len`` tokens); else fp32."""
    present = cpu_flags(cpuinfo)
    flags = [flag for flag in BF16_INSTRUCTION_FLAGS if flag in present]
    if not flags:
        return PrecisionChoice("fp32", "this CPU lists no bf16 instructions (amx_bf16, avx512_bf16, Arm bf16), "
                                       "so bf16 would be emulated, about 20x slower")
    # a sequence longer than MEASURED_TOKENS is timed cut to it: start-up stays a second or two at any length
    sequences, seq_len = max(1, min(micro_batch, MEASURED_TOKENS // seq_len)), min(seq_len, MEASURED_TOKENS)
    speedup = (measure(config, torch.float32, sequences, seq_len)
               / measure(config, torch.bfloat16, sequences, seq_len))
    timed = f"one block's forward+backward ({sequences} x {seq_len} tokens) ran {speedup:.2f}x as fast in bf16"
    if speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice("bf16", f"this CPU has {', '.join(flags)} and {timed}")
    return PrecisionChoice("fp32", f"this CPU has {', '.join(flags)} but {timed} (bf16 needs {BF16_MIN_SPEEDUP}x)")
