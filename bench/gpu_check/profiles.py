"""The check's two profiles: their parts in running order, each with its estimate on one H100 and its
time limit, and the sizes each part runs at.

- ``GPU_PROFILE`` (the default): the presets on one GPU, the answers to "does training work here,
  how fast, within what memory" first.
- ``DRY_RUN_PROFILE`` (``--dry-run``): every GPU part's stand-in on CPU at toy sizes, in the same
  order, with the same limits and estimates, each named for what it runs at that size
  (``train-tiny-zero2-ckpt`` stands in for ``train-1b-zero2-ckpt``).
"""

from dataclasses import replace

from bench.gpu_check.hf_generate import hf_generate_part
from bench.gpu_check.kernel_bench import bench_kernels_part
from bench.gpu_check.parts import Part, Profile
from bench.gpu_check.pytest_parts import gpu_tests, kernel_test_files, kernel_tests_part
from bench.gpu_check.training import TrainingPart, TrainingRun

DEFAULT_BUDGET_S = 580  # the whole check, under the 10 minutes a device command may run
DEFAULT_ESTIMATE_LIMIT_S = 480  # the GPU profile's default parts' estimates add up to at most 8 minutes


def gpu_profile() -> Profile:
    """The presets on one GPU: the 1b preset at ZeRO-2 bf16 with activation checkpointing, the 26m preset in
    fp16, in bf16 with each kernel implementation, AutoEP on the 145m-moe preset and its export, the
    gpu-marked tests; the kernel tests in full and the kernel benchmark opt-in."""
    small = ["--preset", "26m", "--max_seq_len", "340", "--batch_size", "32"]
    small_plan = ["--preset", "26m", "--max_seq_len", "340", "--micro_batch", "32"]
    large = ["--preset", "1b", "--max_seq_len", "2048", "--batch_size", "4", "--activation_checkpointing"]
    large_plan = ["--preset", "1b", "--max_seq_len", "2048", "--micro_batch", "4", "--activation_checkpointing"]
    common = {"steps": 30, "warmup_steps": 5}
    large_run = TrainingRun("train-1b-zero2-ckpt", large, "zero2_bf16.json", steps=20, warmup_steps=5,
                            plan_flags=[*large_plan, "--precision", "bf16"])
    fp16_run = TrainingRun("train-26m-fp16", small, "zero2_fp16.json",
                           plan_flags=[*small_plan, "--precision", "fp16"], **common)
    moe_run = TrainingRun("moe-ep1", ["--preset", "145m-moe", "--use_moe", "1", "--ep_size", "1", "--max_seq_len",
                                      "340", "--batch_size", "16"], "zero2_bf16_moe_ep.json", steps=10,
                          warmup_steps=3, plan_flags=None)
    triton_run = TrainingRun("train-26m-triton", [*small, "--kernels", "triton"], "zero2_bf16.json",
                             plan_flags=[*small_plan, "--precision", "bf16"], **common)
    torch_run = TrainingRun("train-26m-torch", [*small, "--kernels", "torch"], "zero2_bf16.json",
                            plan_flags=[*small_plan, "--precision", "bf16"], **common)
    # In running order (hf-generate exports moe-ep1's checkpoint; train-26m-torch compares with the triton
    # run). Each launch starts cold: imports, DeepSpeed's set-up and a CUDA context take about 30 s.
    parts = (
        # 1.0B parameters: building it, 20 steps of 2 x 2048 tokens (about 0.4 s each at 40% MFU), and a
        # 14 GB final checkpoint (bf16 weights, fp32 masters and Adam moments) written and read back
        Part(large_run.name, TrainingPart(large_run), estimate_s=150, limit_s=300),
        Part(fp16_run.name, TrainingPart(fp16_run), estimate_s=60, limit_s=180),
        Part(moe_run.name, TrainingPart(moe_run, keep_checkpoint=True), estimate_s=70, limit_s=240),  # AutoEP, 10 steps
        Part("hf-generate", hf_generate_part(moe_run.name), estimate_s=40, limit_s=180),  # export, load, 32 tokens
        Part(triton_run.name, TrainingPart(triton_run), estimate_s=55, limit_s=180),  # + kernel compiles
        Part(torch_run.name, TrainingPart(torch_run, compare_with=triton_run.name), estimate_s=45, limit_s=180),
        Part("gpu-tests", gpu_tests, estimate_s=60, limit_s=240),  # a few dozen compiled-kernel tests
        # opt-in: about 90 Triton specialisations compiled cold, and bench.kernels recompiling per case
        Part("kernel-tests", kernel_tests_part(kernel_test_files(), interpreted=False), estimate_s=240,
             limit_s=300, default=False),
        Part("bench-kernels", bench_kernels_part(smoke=False), estimate_s=240, limit_s=360, default=False),
    )
    return Profile("gpu", "The presets on one GPU, a few dozen steps each: speeds, MFU and peak memory are the "
                   "GPU's.", on_gpu=True, parts=parts)


def dry_run_profile(gpu: Profile) -> Profile:
    """``gpu``'s parts on CPU at toy sizes, each replaced by a stand-in named for what it runs: a 64 x 2 fp32
    model instead of every preset (the triton run with interpreted kernels), the MoE run in fp32, the fp16 run
    skipped (DeepSpeed refuses fp16 on CPU), export and generation on CPU, the gpu-marked tests (all skipped),
    one kernel test file interpreted, ``bench.kernels --smoke``."""
    # evaluation and samples run as on a GPU, bounded: the whole held-out 1% is ~800 forwards per run here
    tiny = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "32", "--batch_size", "2",
            "--eval_batches", "2", "--sample_tokens", "4"]
    plan = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "32", "--micro_batch", "2",
            "--precision", "fp32"]
    common = {"ds_config": "zero2_fp32.json", "steps": 3, "warmup_steps": 1}
    large_run = TrainingRun("train-tiny-zero2-ckpt", [*tiny, "--activation_checkpointing"],
                            plan_flags=[*plan, "--activation_checkpointing"], **common)
    fp16_run = TrainingRun("train-tiny-fp16", tiny, plan_flags=None, **common,
                           skip_reason="fp16 needs a GPU: DeepSpeed refuses fp16 on CPU")
    moe_run = TrainingRun("moe-tiny-ep1", [*tiny, "--use_moe", "1", "--ep_size", "1"], "zero2_bf16_moe_ep.json",
                          steps=3, warmup_steps=1, plan_flags=None, ds_config_updates={"bf16": {"enabled": False}})
    triton_run = TrainingRun("train-tiny-triton-interpreted", [*tiny, "--kernels", "triton"], plan_flags=plan,
                             env={"TRITON_INTERPRET": "1"}, **common)
    torch_run = TrainingRun("train-tiny-torch", [*tiny, "--kernels", "torch"], plan_flags=plan, **common)
    rope_tests = ["tests/test_kernels_rope.py"]
    stand_ins = {  # the GPU part's name -> its stand-in's name and what runs it
        "train-1b-zero2-ckpt": (large_run.name, TrainingPart(large_run)),
        "train-26m-fp16": (fp16_run.name, TrainingPart(fp16_run)),
        "moe-ep1": (moe_run.name, TrainingPart(moe_run, keep_checkpoint=True)),
        "hf-generate": ("hf-generate", hf_generate_part(moe_run.name)),
        "train-26m-triton": (triton_run.name, TrainingPart(triton_run)),
        "train-26m-torch": (torch_run.name, TrainingPart(torch_run, compare_with=triton_run.name)),
        "gpu-tests": ("gpu-tests", gpu_tests),
        "kernel-tests": ("kernel-tests-rope-interpreted", kernel_tests_part(rope_tests, interpreted=True)),
        "bench-kernels": ("bench-kernels-smoke", bench_kernels_part(smoke=True)),
    }
    parts = tuple(replace(part, name=stand_ins[part.name][0], run=stand_ins[part.name][1], stands_in_for=part.name)
                  for part in gpu.parts)
    return Profile("cpu-dry-run", "Dry run on CPU: a 64 x 2 fp32 model stands in for every preset (its speeds and "
                   "MFU say nothing), the triton run interprets the kernels (TRITON_INTERPRET=1); it checks the "
                   "check itself.", on_gpu=False, parts=parts)


GPU_PROFILE = gpu_profile()
DRY_RUN_PROFILE = dry_run_profile(GPU_PROFILE)
