"""CPU ranks: torch's thread count from the cores and the ranks on the node, and the precision a run
without ``--deepspeed_config`` picks from the processor's instructions and one timed decoder block."""

import json

import pytest
import torch

from minimind.model import MiniMindConfig
from minimind.model.precision import precision_of
from minimind.training import stage_run
from minimind.training.arguments import PRECISION_DS_CONFIGS, cpu_ds_config, parse_args, resolved_flags
from minimind.training.hardware import cpu as cpu_host
from minimind.training.run.inputs import RunInputs

EPYC_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 xsave\n"
SAPPHIRE_RAPIDS_FLAGS = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
NEOVERSE_FEATURES = "Features\t: fp asimd evtstrm aes sve bf16 i8mm\n"


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("environ, cores, node, expected", [
    ({}, 2, 2, 2),
    ({"LOCAL_SIZE": "2"}, 2, 2, 1),  # DeepSpeed's launcher, 2 ranks on 2 cores
    ({"LOCAL_WORLD_SIZE": "3"}, 16, 16, 5),  # torchrun's variable (torchrun itself also sets OMP_NUM_THREADS=1)
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, 4, 4, 1),  # more ranks than cores: never 0
    ({"SLURM_NTASKS_PER_NODE": "4", "OMP_NUM_THREADS": "3"}, 64, 64, 3),  # the user's (or a binding's) setting wins
    ({"SLURM_NTASKS_PER_NODE": "8"}, 12, 96, 12),  # --cpus-per-task 12: the rank is bound to its own 12 cores
    ({"LOCAL_SIZE": "4"}, 24, 96, 24),  # deepspeed --bind_cores_to_rank: bound to a quarter of the node
])
def test_each_rank_takes_its_share_of_the_cores(threads_restored, monkeypatch, environ, cores, node, expected):
    monkeypatch.setattr(cpu_host, "available_cores", lambda: cores)
    monkeypatch.setattr(cpu_host, "node_cores", lambda: node)
    assert cpu_host.cores_per_rank(environ) == (expected if "OMP_NUM_THREADS" not in environ else 16)
    line = cpu_host.set_cpu_threads(environ)
    assert torch.get_num_threads() == expected
    assert line.startswith(f"CPU threads: {expected} per rank (")


def fixed_speeds(fp32_seconds: float, bf16_seconds: float, calls: list | None = None):
    def measure(config, dtype, sequences, seq_len):
        if calls is not None:
            calls.append((sequences, seq_len))
        return {torch.float32: fp32_seconds, torch.bfloat16: bf16_seconds}[dtype]
    return measure


CONFIG = MiniMindConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)


def test_bf16_needs_bf16_instructions_and_a_faster_block():
    calls = []
    choice = cpu_host.choose_cpu_precision(CONFIG, 8, 340, "flags\t: sse2 avx2 fma\n",
                                           measure=fixed_speeds(1.0, 0.01, calls))
    assert choice.precision == "fp32" and "no bf16 instructions" in choice.reason
    assert calls == []  # nothing timed where bf16 would be emulated
    for cpuinfo in (EPYC_FLAGS, SAPPHIRE_RAPIDS_FLAGS, NEOVERSE_FEATURES):
        choice = cpu_host.choose_cpu_precision(CONFIG, 8, 340, cpuinfo, measure=fixed_speeds(1.0, 0.4, calls))
        assert choice.precision == "bf16" and "(6 x 340 tokens) ran 2.50x as fast in bf16" in choice.reason
        slow = cpu_host.choose_cpu_precision(CONFIG, 8, 340, cpuinfo, measure=fixed_speeds(1.0, 1.25))
        assert slow.precision == "fp32" and "0.80x" in slow.reason
    assert set(calls) == {(6, 340)}  # at most MEASURED_TOKENS of the micro-batch: 2048 // 340 = 6 sequences
    cpu_host.choose_cpu_precision(CONFIG, 2, 40_000, EPYC_FLAGS, measure=fixed_speeds(1.0, 1.0, calls))
    assert calls[-1] == (1, 2048)  # never fewer than one sequence, never more than MEASURED_TOKENS


def test_a_real_block_is_timed_in_both_precisions():
    for dtype in (torch.float32, torch.bfloat16):
        assert 0 < cpu_host.block_seconds(CONFIG, dtype, 2, 17) < 5.0


def test_a_cpu_run_without_a_config_takes_the_chosen_precision(monkeypatch):
    flags, _ = resolved_flags(vars(parse_args(["--hidden_size", "64", "--batch_size", "3"])), cpu_only=True)
    seen = {}

    def choose(config, micro_batch, seq_len):
        seen.update(hidden=config.hidden_size, layers=config.num_hidden_layers, micro_batch=micro_batch,
                    seq_len=seq_len)
        return cpu_host.PrecisionChoice("bf16", "a stated reason")

    monkeypatch.setattr("minimind.training.arguments.choose_cpu_precision", choose)
    path, line = cpu_ds_config(flags)
    assert path == str(PRECISION_DS_CONFIGS["bf16"])
    assert seen == {"hidden": 64, "layers": 8, "micro_batch": 3, "seq_len": 340}
    assert line == "precision bf16: a stated reason (--deepspeed_config chooses another)"


def run_inputs(ds_config: dict, precision_timed: bool) -> RunInputs:
    return RunInputs(cpu_only=True, demo=False, ds_config=ds_config, batch=None, save_dir=None, tokenizer=None,
                     model_config=None, data=None, cache_locations=(), resume_request=None, ep_size=None,
                     fit_batch_to_corpus=False, precision_timed=precision_timed)


@pytest.mark.parametrize("mine, rank_zero", [("fp32", "bf16"), ("bf16", "fp32"), ("bf16", "bf16")])
def test_every_rank_trains_in_the_precision_rank_zero_timed(monkeypatch, mine, rank_zero):
    monkeypatch.setattr(stage_run, "broadcast_object", lambda obj: rank_zero)
    config = json.loads(PRECISION_DS_CONFIGS[mine].read_text())
    agreed = stage_run.follow_rank_zero_precision(run_inputs(config, precision_timed=True))
    assert precision_of(agreed.ds_config) == rank_zero
    other_keys = {key: value for key, value in config.items() if key != "bf16"}
    assert {key: value for key, value in agreed.ds_config.items() if key != "bf16"} == other_keys
    # a config the user named is never changed
    named = stage_run.follow_rank_zero_precision(run_inputs(config, precision_timed=False))
    assert named.ds_config is config
