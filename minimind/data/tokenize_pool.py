"""Work units tokenized by a pool of worker processes, each with one tokenizer thread, under one progress bar.

The workers are forked, not spawned. A spawned process starts a fresh interpreter, and the
first import of anything under ``minimind`` runs ``minimind/__init__.py``, which imports torch
and transformers: about 5 s of a core per worker before its first text, which would eat the
gain on the files this speeds up most. A forked worker starts in milliseconds with the plan and
the reader code in place. What fork is warned against does not reach it: it touches neither
torch (whose OpenMP threads, and on a GPU node its CUDA context, it inherits idle) nor the
parent's tokenizer (it builds its own from ``to_str()`` with ``tokenizers.Tokenizer.from_str``,
single-threaded), and the pool starts before this process takes any lock of its own (a forked
child keeps its parent's open files, and so its locks, until it exits). PyTorch's DataLoader
forks its workers out of training processes on Linux the same way.

Every worker walks all the units in order and tokenizes those it can claim
(``unit_claims.claim_and_tokenize``), so they share the work with each other exactly as with
any other process building the same caches. They send the bytes they read, as they read them,
to this process's progress bar, and a ``DataError`` to stop the build; a worker that dies
otherwise leaves its unit unclaimed, and this process then takes it itself.
"""

import multiprocessing
import queue
import signal
from collections.abc import Callable, Sequence

from tokenizers import Tokenizer
from tqdm import tqdm

from minimind.data import build_lock
from minimind.data.document_encoding import parallel_tokenization, single_thread_tokenization
from minimind.data.jsonl_reader import DataError
from minimind.data.token_parts import parts_folder
from minimind.data.unit_claims import Claim, UnitTask, claim_and_tokenize, finish_units


def tokenize_units(tasks: Sequence[UnitTask], tokenizer: Tokenizer, workers: int, *, show_progress: bool,
                   log: Callable[[str], None]) -> None:
    """Tokenize every unit of ``tasks`` into its part with ``workers`` forked processes and any other process
    building the same caches, then the units no one holds here; returns when every part exists.

    One progress bar counts the bytes of the units this process and its workers tokenize.
    """
    pending = [task for task in tasks if not task.done()]
    if not pending:
        return
    for folder in {parts_folder(task.cache_folder) for task in pending}:
        folder.mkdir(parents=True, exist_ok=True)
    workers = min(workers, len(pending))
    files = len({task.cache_folder for task in pending})
    log(f"token cache: tokenizing {len(pending)} units ({sum(task.unit.size for task in pending) / 2**20:.1f} MiB) "
        f"of {files} file{'s' if files > 1 else ''} with {workers} worker processes")
    with (WorkerPool(pending, tokenizer.to_str(), workers) as pool,  # forked before the bar starts its thread
          tqdm(total=sum(task.unit.size for task in pending), unit="B", unit_scale=True, desc="tokenizing",
               disable=not show_progress) as progress):
        tokenized = pool.wait(progress.update, log)
        with parallel_tokenization(log):
            tokenized += finish_units(pending, tokenizer, progress.update, log)
        progress.total = progress.n  # the units other processes took are not this bar's
    log(f"token cache: {tokenized} of {len(pending)} units tokenized by this process and its workers"
        + ("" if tokenized == len(pending) else ", the others by other processes"))


class WorkerPool:
    """``workers`` forked processes claiming and tokenizing ``tasks`` (a context manager that stops them on exit)."""

    def __init__(self, tasks: Sequence[UnitTask], tokenizer_json: str, workers: int):
        context = multiprocessing.get_context("fork")
        self.messages = context.Queue()
        self.processes = [context.Process(target=_work, args=(tasks, tokenizer_json, self.messages),
                                          name=f"tokenize-{index}", daemon=True) for index in range(workers)]
        with single_thread_tokenization():
            for process in self.processes:
                process.start()

    def wait(self, report: Callable[[int], None], log: Callable[[str], None]) -> int:
        """Pass the workers' bytes to ``report`` until they have all exited; returns how many units they
        tokenized. A worker's ``DataError`` is raised here."""
        tokenized = 0
        while True:
            running = any(process.is_alive() for process in self.processes)
            try:  # once none runs, everything they sent is in the pipe
                kind, value = self.messages.get(timeout=build_lock.POLL_S if running else 0)
            except queue.Empty:
                if running:
                    continue
                break
            if kind == "bytes":
                report(value)
            elif kind == "tokenized":
                tokenized += 1
            else:
                raise DataError(*value)
        for process in self.processes:
            if process.exitcode:
                log(f"token cache: worker {process.name} (pid {process.pid}) stopped with status {process.exitcode}; "
                    "its unit is left to this process")
        return tokenized

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join()
        self.messages.close()


def _work(tasks: Sequence[UnitTask], tokenizer_json: str, messages) -> None:
    """A worker: tokenize each unit of ``tasks`` it can claim, sending ("bytes", n) as it reads, ("tokenized",
    None) per unit, and ("error", (path, line, reason)) for bad data, which ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    tokenizer = Tokenizer.from_str(tokenizer_json)
    try:
        for task in tasks:
            if claim_and_tokenize(task, tokenizer, lambda n: messages.put(("bytes", n))) is Claim.TOKENIZED:
                messages.put(("tokenized", None))
    except DataError as error:
        messages.put(("error", (error.path, error.line, error.reason)))
