"""GPU acceptance check: kernels, training, expert parallelism and export on one GPU, in one command.

    python -m bench.gpu_check            # the GPU profile: one H100/H200, about 8 minutes; report in gpu_check/
    python -m bench.gpu_check --dry-run  # the CPU dry-run profile, toy sizes, about 2 minutes: checks the check
    python -m bench.gpu_check --all      # the opt-in kernel tests and kernel benchmark too
    python -m bench.gpu_check --only train-1b-zero2-ckpt moe-ep1 hf-generate   # rerun some parts

Run it from the repository root, with the project installed (``pip install -e .``; on a machine
without a package index, ``pip install --no-deps --no-build-isolation -e .``). The parts run in
their profile's order, each in subprocesses within its own time limit, so that one failure does
not stop the rest; a part that would start past the check's budget (``--budget_s``, 580 s) is
reported not run. The GPU profile (``profiles.GPU_PROFILE``) answers "does training work here, how
fast, within what memory" first:

- ``train-1b-zero2-ckpt``: the 1b preset at ZeRO-2 bf16 with ``--activation_checkpointing``:
  MFU, tokens/s and peak GPU memory against ``python -m minimind.plan``;
- ``train-26m-fp16``: ``zero2_fp16.json``'s dynamic loss scaling on the 26m preset;
- ``moe-ep1``: the 145m-moe preset under AutoEP at ``--ep_size 1`` (``zero2_bf16_moe_ep.json``);
- ``hf-generate``: ``python -m minimind.checkpoint export`` of that run to a Hugging Face folder,
  loaded with ``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`` on the GPU
  and the shipped tokenizer, greedy ``generate``;
- ``train-26m-triton``, ``train-26m-torch``: the 26m preset in bf16 with ``--kernels triton`` and
  ``torch`` (what the fused kernels gain end to end; the two runs' losses compared);
- ``gpu-tests``: ``pytest -m gpu`` with ``TRITON_INTERPRET=0`` (compiled kernels); on a GPU every
  one of them must run and pass.

Opt-in (``--all`` or ``--only``), for their many cold compiles:

- ``kernel-tests``: ``tests/test_kernels_*.py`` in full, compiled (their ``device`` fixture picks CUDA);
- ``bench-kernels``: ``python -m bench.kernels`` (Triton RMSNorm and RoPE against eager and
  ``torch.compile``, GB/s against a measured device copy); its table goes into the report.

The training parts run ``pretrain_ds.py`` under ``deepspeed --num_gpus 1`` for a few dozen steps
on the bundled corpus, accumulation 1. Figures: median ``tokens_per_s`` and ``mfu`` of
``metrics.jsonl`` after the warm-up steps, and the peak GPU memory against the plan.

``--dry-run`` runs the CPU dry-run profile (``profiles.DRY_RUN_PROFILE``, ``CUDA_VISIBLE_DEVICES=""``):
each GPU part's stand-in at toy sizes, in the same order with the same limits and estimates, named
for what it runs: ``train-tiny-zero2-ckpt``, ``train-tiny-fp16`` (skipped: DeepSpeed refuses fp16 on
CPU), ``moe-tiny-ep1`` (fp32), ``hf-generate`` (on CPU), ``train-tiny-triton-interpreted``
(``TRITON_INTERPRET=1``), ``train-tiny-torch``, ``gpu-tests`` (all skipped);
``kernel-tests-rope-interpreted`` and ``bench-kernels-smoke`` opt-in. The tiny model is 64 x 2 in fp32
(``zero2_fp32.json``).

Output in ``--out`` (default ``gpu_check/``): ``report.json`` (the profile, the environment, every
part's status, reason, wall time, limit, H100 estimate and figures, the parts not run and why;
rewritten after each part, so a killed check still leaves one), ``report.md`` (the summary table,
also printed), ``logs/`` and each run's ``metrics.jsonl`` under ``runs/``; checkpoints and exported
weights are deleted once read. Exit status 0 when every part passed or was skipped with a reason, 1
otherwise.

The modules, one job each: ``profiles`` (the two profiles' parts, sizes, estimates and limits),
``parts`` (what a part and its result are), ``runner`` (each part in its time window within the
budget), ``training``, ``hf_generate`` with its process ``greedy_generate``, ``pytest_parts`` and
``kernel_bench`` (the parts), ``gpu_memory`` (peak GPU memory from ``nvidia-smi``), ``report``
(``report.json`` and ``report.md``) and ``__main__`` (the flags). Jobs start through
``bench.harness``.
"""
