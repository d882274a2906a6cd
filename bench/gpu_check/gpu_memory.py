"""Peak GPU memory of a launch, measured from outside: ``nvidia-smi`` polled while it runs.

The trainer does not log its peak memory. ``memory.used`` counts what the allocator reserved plus
the CUDA context (about 0.5 GiB), which ``minimind.plan`` leaves to its 10% reserve.
"""

import shutil
import subprocess
import threading


class GpuMemoryPeak:
    """Highest ``nvidia-smi`` ``memory.used`` of GPU 0 while the ``with`` block runs, minus the reading
    before it, in MiB (None where nvidia-smi is missing). GPU 0 is where ``deepspeed --num_gpus 1``
    puts its rank: with ``--num_gpus`` the runner ignores ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, interval_s: float = 0.2):
        self.command = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        self.interval_s = interval_s
        self.available = shutil.which("nvidia-smi") is not None
        self.baseline_mib = self.peak_mib = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _read_mib(self) -> int | None:
        result = subprocess.run(self.command, capture_output=True, text=True)
        return int(result.stdout.split()[0]) if result.returncode == 0 and result.stdout.strip() else None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            used = self._read_mib()
            if used is not None:
                self.peak_mib = max(self.peak_mib or 0, used)

    def __enter__(self) -> "GpuMemoryPeak":
        if self.available:
            self.baseline_mib = self._read_mib()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()

    @property
    def run_mib(self) -> int | None:
        """The peak minus the reading before the block, in MiB; None without both readings."""
        if self.baseline_mib is None or self.peak_mib is None:
            return None
        return self.peak_mib - self.baseline_mib
