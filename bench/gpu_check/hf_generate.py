"""The ``hf-generate`` part: ``python -m minimind.checkpoint export`` of a training part's checkpoint to a
Hugging Face folder, then greedy generation from it in a fresh process (``greedy_generate``), on the GPU
(on CPU in a dry run)."""

import json
import shutil
import sys
from collections.abc import Callable

from bench.gpu_check.greedy_generate import PROMPT
from bench.gpu_check.parts import PartFailed, PartSkipped, Passed
from bench.gpu_check.runner import Check, failure_reason
from bench.gpu_check.training import remove_weights


def hf_generate_part(source: str) -> Callable[[Check], Passed]:
    """The part that exports the checkpoint the training part ``source`` kept and generates from the export;
    the checkpoint and the export are deleted afterwards."""

    def part(check: Check) -> Passed:
        save_dir = check.runs / source
        trained = check.results.get(source)
        if trained is None or trained.status != "pass":
            raise PartSkipped(f"no checkpoint to export: {source} did not pass")
        hf_dir, modules_cache = check.out / "hf", check.out / "hf_modules"
        shutil.rmtree(hf_dir, ignore_errors=True)
        device = "cuda" if check.profile.on_gpu else "cpu"
        generated_json = check.logs / "hf-generate.json"
        try:
            export = [sys.executable, "-m", "minimind.checkpoint", "export", str(save_dir / "checkpoints"),
                      str(hf_dir), "--format", "hf"]
            status, log_path = check.run_command(export, "hf-export")
            if status != 0:
                raise PartFailed(failure_reason(f"export exited {status}", log_path))
            generated_json.unlink(missing_ok=True)
            max_new_tokens = 32 if check.profile.on_gpu else 8
            generate = [sys.executable, "-m", "bench.gpu_check.greedy_generate", str(hf_dir), "--device", device,
                        "--max_new_tokens", str(max_new_tokens), "--result", str(generated_json)]
            # HF_MODULES_CACHE: where transformers copies the exported folder's remote code
            status, log_path = check.run_command(generate, "hf-generate", {"HF_MODULES_CACHE": str(modules_cache)})
            if status != 0 or not generated_json.is_file():
                raise PartFailed(failure_reason(f"generation exited {status}", log_path))
        finally:
            remove_weights(save_dir)
            shutil.rmtree(hf_dir, ignore_errors=True)
            shutil.rmtree(modules_cache, ignore_errors=True)
        figures = json.loads(generated_json.read_text())
        if not figures["text"].strip():
            raise PartFailed(f"generation produced no text ({figures['new_tokens']} new tokens)")
        if not figures["device"].startswith(device):
            raise PartFailed(f"the model ran on {figures['device']}, not {device}")
        if not figures["model_class"].startswith("transformers_modules."):
            raise PartFailed(f"{figures['model_class']} was loaded, not the exported folder's modeling_minimind.py")
        summary = f"on {figures['device']}: {PROMPT!r} -> {figures['text'][:60]!r}"
        return Passed(summary, figures)

    return part
