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

import ctypes
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Sequence

from tokenizers import Tokenizer
from tqdm import tqdm

from minimind.data import build_lock
from minimind.data.document_encoding import parallel_tokenization, single_thread_tokenization
from minimind.data.jsonl_reader import DataError
from minimind.data.token_parts import parts_folder
from minimind.data.unit_claims import Claim, UnitTask, claim_and_tokenize, finish_units

_PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies


def tokenize_units(tasks: Sequence[UnitTask], tokenizer: Tokenizer, workers: int, *, show_progress: bool,
                   log: Callable[[str], None]) -> None:
    """Tokenize every unit of ``tasks`` into its part with any other process building the same caches, here and,
    with ``workers`` above 1 and more than one unit to do, in ``workers`` forked processes; returns when every
    part exists.

    A worker is a core: one worker tokenizes in this process with one tokenizer thread; one unit with more
    workers, and the units left when the forked workers are done, on the tokenizers library's threads. One
    progress bar counts the bytes of the units this process and its workers tokenize.
    """
    pending = [task for task in tasks if not task.done()]
    if not pending:
        return
    for folder in {parts_folder(task.cache_folder) for task in pending}:
        folder.mkdir(parents=True, exist_ok=True)
    forked = min(workers, len(pending)) if workers > 1 and len(pending) > 1 else 0
    files = len({task.cache_folder for task in pending})
    how = (f"{forked} worker processes" if forked
           else "this process, the tokenizer's threads" if workers > 1 else "this process, one tokenizer thread")
    log(f"token cache: tokenizing {len(pending)} unit{'s' if len(pending) > 1 else ''} "
        f"({sum(task.unit.size for task in pending) / 2**20:.1f} MiB) of {files} file{'s' if files > 1 else ''} "
        f"with {how}")
    started = time.monotonic()
    with (WorkerPool(pending, tokenizer.to_str(), forked) as pool,  # forked before the progress bar's thread
          tqdm(total=sum(task.unit.size for task in pending), unit="B", unit_scale=True, desc="tokenizing",
               disable=not show_progress) as progress):
        tokenized = pool.wait(progress.update, log)
        with parallel_tokenization(log) if workers > 1 else single_thread_tokenization():
            tokenized += finish_units(pending, tokenizer, progress.update, log)
        progress.total = progress.n  # the units other processes took are not this bar's
    log(f"token cache: {tokenized} of {len(pending)} units tokenized by this process"
        f"{' and its workers' if forked else ''} in {time.monotonic() - started:.1f} s"
        + ("" if tokenized == len(pending) else ", the others by other processes"))


class WorkerPool:
    """``workers`` forked processes claiming and tokenizing ``tasks`` (a context manager that stops them on exit)."""

    def __init__(self, tasks: Sequence[UnitTask], tokenizer_json: str, workers: int):
        context = multiprocessing.get_context("fork")
        self.messages = context.Queue()
        self.processes = [context.Process(target=_work, args=(tasks, tokenizer_json, self.messages, os.getpid()),
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


def _work(tasks: Sequence[UnitTask], tokenizer_json: str, messages, parent: int) -> None:
    """A worker: tokenize each unit of ``tasks`` it can claim, sending ("bytes", n) as it reads, ("tokenized",
    None) per unit, and ("error", (path, line, reason)) for bad data or a file it cannot read, which ends it.
    It ends with its parent too (a rank the launcher kills must not leave workers holding its output)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    _end_with_parent(parent)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    try:
        for task in tasks:
            if claim_and_tokenize(task, tokenizer, lambda n: messages.put(("bytes", n))) is Claim.TOKENIZED:
                messages.put(("tokenized", None))
    except DataError as error:
        messages.put(("error", (error.path, error.line, error.reason)))
    except OSError as error:
        messages.put(("error", (error.filename or "a data file", None, f"cannot read ({error.strerror or error})")))


def _end_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux's PR_SET_PDEATHSIG); exit now if
    the parent is already gone. Elsewhere, nothing: the parent's exit handler stops the pool."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)
