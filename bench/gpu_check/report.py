"""The check's report: ``report.json`` (which profile ran, the environment, every part's result, the
parts not run and why) and ``report.md`` (the same as a summary table, also printed)."""

import json
import sys
from dataclasses import asdict
from datetime import datetime
from importlib import metadata
from pathlib import Path

from bench.gpu_check.parts import PartResult, Profile


def report_header(profile: Profile, query_gpu: bool) -> dict:
    """Which profile runs, the date, library versions, CUDA version and, with ``query_gpu``,
    ``torch.cuda.get_device_name()`` (which starts a CUDA context in this process: asked only once the
    parts are done)."""
    import torch

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    if not query_gpu:
        gpu = "not asked yet"
    else:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    return {"profile": profile.name, "profile_description": profile.description,
            "date": datetime.now().astimezone().isoformat(timespec="seconds"), "gpu": gpu,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "deepspeed": version("deepspeed"), "triton": version("triton"), "transformers": version("transformers"),
            "python": sys.version.split()[0]}


def status_cell(result: PartResult) -> str:
    """``pass``, or ``fail: ...`` / ``skip: ...`` with the first line of the reason."""
    return result.status if not result.reason else f"{result.status}: {result.reason.splitlines()[0]}"


def markdown_report(header: dict, results: list[PartResult], wall_s: float, skipped: dict[str, str]) -> str:
    """The summary: the profile, the environment line, one table row per part, the parts not run, what
    each dry-run part stands in for, how memory was measured."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# GPU acceptance check: {header['profile']} profile", "", header["profile_description"], "",
             f"{header['date']}; {header['gpu']}; torch {header['torch']} (CUDA {header['cuda']}), "
             f"deepspeed {header['deepspeed']}, triton {header['triton']}, transformers {header['transformers']}; "
             f"{wall_s:.0f} s in all", "",
             "| part | status | wall s | limit s | H100 estimate s | key figures |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {r.name} | {cell(status_cell(r))} | {r.wall_s:.0f} | {r.limit_s:.0f} | {r.estimate_s:.0f} | "
              f"{cell(r.summary)} |" for r in results]
    if skipped:
        lines += ["", "Not run: " + "; ".join(f"{name} ({why})" for name, why in skipped.items()) + "."]
    if any(r.stands_in_for for r in results):
        renamed = "; ".join(f"{r.name} for {r.stands_in_for}" for r in results if r.stands_in_for not in (None, r.name))
        lines += ["", "Each part stands in for the GPU profile's part of the same name"
                  + (f" or, named for what it runs here: {renamed}" if renamed else "")
                  + "; it shows that part's limit and H100 estimate."]
    lines += ["", "Training: median over the logged steps after the warm-up, accumulation 1. Peak memory: "
              "nvidia-smi memory.used during the launch minus before it (allocator reserve + CUDA context); "
              "plan: python -m minimind.plan for the same preset, ZeRO stage, micro-batch and sequence."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, header: dict, results: list[PartResult], wall_s: float, unselected: dict[str, str]) -> str:
    """Write ``report.json`` and ``report.md`` into ``out``; returns the markdown. Their "not run" list holds
    the ``unselected`` parts and those the time budget left no room for."""
    skipped = {**{r.name: r.reason for r in results if r.reason.startswith("not run")}, **unselected}
    report = {**header, "wall_s": wall_s, "passed": all(r.status != "fail" for r in results),
              "parts": [asdict(r) for r in results], "not_run": skipped}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    markdown = markdown_report(header, results, wall_s, skipped)
    (out / "report.md").write_text(markdown)
    return markdown
