"""The ``bench-kernels`` part (opt-in): ``python -m bench.kernels``, Triton RMSNorm and RoPE against
eager and ``torch.compile``, its table read into the report."""

import re
import sys
from collections.abc import Callable

from bench.gpu_check.parts import PartFailed, Passed
from bench.gpu_check.runner import Check, failure_reason


def parse_kernel_table(text: str) -> tuple[float | None, list[dict]]:
    """``bench.kernels``'s copy bandwidth (GB/s) and its table rows as dicts keyed by the header."""
    copy = re.search(r"Device-to-device copy: ([\d.]+) GB/s", text)
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        else:
            rows.append(dict(zip(header, cells, strict=True)))
    return (float(copy.group(1)) if copy else None), rows


def bench_kernels_part(smoke: bool) -> Callable[[Check], Passed]:
    """The part that runs ``python -m bench.kernels`` (``--smoke``: tiny shapes, times meaningless): its table,
    and per kernel the largest shape's forward+backward speed-ups."""

    def part(check: Check) -> Passed:
        command = [sys.executable, "-m", "bench.kernels", *(["--smoke"] if smoke else [])]
        status, log_path = check.run_command(command, "bench-kernels")
        if status != 0:
            raise PartFailed(failure_reason(f"bench.kernels exited {status}", log_path))
        copy_gbs, rows = parse_kernel_table(log_path.read_text())
        if not rows:
            raise PartFailed(f"bench.kernels printed no table (log: {log_path})")
        largest = {}
        for row in rows:
            if row["mode"] == "forward+backward":
                largest[row["kernel"]] = row  # shapes are listed smallest first
        if smoke:
            summary = f"smoke: {len(rows)} rows, the three implementations agree (times meaningless)"
        else:
            summary = f"copy {copy_gbs:,.0f} GB/s; fwd+bwd " + "; ".join(
                f"{kernel} {row['shape']}: {row['triton GB/s']} GB/s ({row['% of copy']} of copy), "
                f"{row['vs eager']} eager, {row['vs compile']} compile" for kernel, row in largest.items())
        return Passed(summary, {"copy_gbs": copy_gbs, "largest_forward_backward": largest, "table": rows})

    return part
