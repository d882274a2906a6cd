"""From the data section of a run's config to the samples each rank trains on and the evaluation windows.

``DataSettings`` is that section. Before the process group, ``cache_location`` checks each file
(every rank rejects bad data alike, in one line). Then ``load_samples`` builds or loads the token
caches (one process per cache folder; the others wait on its lock file) and cuts them into
training samples (packed windows or padded documents, a weighted mixture of sources when the
files carry weights) and the evaluation windows; ``training_data`` deals the samples to this rank
and counts the optimizer steps. Rank, world and worker counts come in as parameters: nothing
here asks the process group or imports the training side.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from minimind.data.corpus import Corpus, DataSource, source_files
from minimind.data.default_corpus import default_corpus_path
from minimind.data.held_out import DocumentSplit, document_stream, split_documents
from minimind.data.jsonl_reader import DataError
from minimind.data.loader import make_data_loader
from minimind.data.mixture import EXHAUST_MEANINGS, MixedSamples, MixtureSource
from minimind.data.sampler import RankInvariantSampler
from minimind.data.text_sources import validate_texts
from minimind.data.token_cache import (
    TokenCache,
    TokenCacheLocation,
    build_or_load_token_cache,
    build_or_load_token_caches,
    token_cache_location,
)
from minimind.data.token_spans import TokenSpans
from minimind.data.windows import PackedWindows, PaddedDocuments


@dataclass(frozen=True)
class DataSettings:
    """What a run trains and evaluates on, and how the text becomes samples."""

    sources: tuple[DataSource, ...]  # --data_path's sources (weighted: a mixture); none: the bundled corpus
    max_seq_len: int
    packing: bool  # packed windows of documents; False: one padded document per sample
    eval_fraction: float | None  # documents held out of each source for validation
    eval_data_path: str | None  # a separate validation file (instead of eval_fraction), as given
    skip_bad_lines: bool
    text_field: str
    mixture_exhaust: str  # what a mixture does when a source runs out (mixture.EXHAUST_POLICIES)
    seed: int
    tokenize_workers: int  # processes (cores) this rank tokenizes with
    loader_workers: int = 0  # DataLoader worker processes of this rank (0: the rank reads its samples itself)
    padded_rows: str = "minimind3"  # without packing: whose PretrainDataset rows (windows.PADDED_ROWS)

    @property
    def data_paths(self) -> tuple[Path, ...]:
        """Every file the sources name, in order, each once; none: the bundled corpus."""
        return source_files(self.sources)

    @property
    def is_mixture(self) -> bool:
        """Whether the sources carry weights: the samples are a mixture of them."""
        return any(source.weight is not None for source in self.sources)

    def description(self) -> str:
        """The training data in a few words: the file's name, the count and first names of several, the
        sources of a mixture, or the bundled corpus."""
        if self.is_mixture:
            return f"a mixture of {', '.join(f'{source.name}:{source.weight:g}' for source in self.sources)}"
        names = [path.name for path in self.data_paths]
        if len(names) > 1:
            return f"{len(names)} files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        return names[0] if names else "the bundled corpus"


@dataclass
class TrainingData:
    """One rank's share of the training samples: its sampler and loader, the epochs and optimizer steps the
    run trains, the micro-batches of one step, and the mixture (if any). It owns the epochs: ``optimizer_steps``
    deals each epoch in turn and drops an epoch's tail smaller than one global batch."""

    sampler: RankInvariantSampler
    loader: torch.utils.data.DataLoader
    epochs: int
    total_steps: int
    accumulation: int
    log: Callable[[str], None]
    mixture: MixedSamples | None = None

    def start_epoch(self, epoch: int, start_sample: int) -> list[str]:
        """Deal epoch ``epoch`` from global sample ``start_sample`` on (a mixture's sources move on to the
        epoch's samples); returns lines naming the sources this epoch repeats."""
        self.sampler.set_epoch(epoch, start_sample)
        if self.mixture is None:
            return []
        self.mixture.set_epoch(epoch)
        return self.mixture.describe_repeats()

    def optimizer_steps(self, epoch: int, sample_in_epoch: int) -> Iterator[tuple[int, list[dict]]]:
        """This rank's micro-batches one optimizer step at a time, each with its epoch, from global sample
        ``sample_in_epoch`` of ``epoch`` to the end of the last epoch. Nothing is read ahead: the caller stops
        pulling at its last step, and the next epoch is not dealt before its first step is asked for."""
        for current in range(epoch, self.epochs):
            for line in self.start_epoch(current, sample_in_epoch if current == epoch else 0):
                self.log(line)
            batches = iter(self.loader)
            while len(micro_batches := take(batches, self.accumulation)) == self.accumulation:
                yield current, micro_batches


def take(iterator: Iterator[dict], count: int) -> list[dict]:
    """Up to ``count`` items from ``iterator``."""
    items = []
    for item in iterator:
        items.append(item)
        if len(items) == count:
            break
    return items


def cache_location(path: Path, tokenizer: PreTrainedTokenizerFast, settings: DataSettings) -> TokenCacheLocation:
    """The token cache location of the data file ``path`` (read as ``skip_bad_lines`` and ``text_field``
    say). A file with no cache yet is read whole here, so that every rank rejects bad data together (a
    one-line ``DataError``) before the process group starts; a file whose token cache exists was checked
    when it was built."""
    location = token_cache_location(path, tokenizer, skip_bad_lines=settings.skip_bad_lines,
                                    text_field=settings.text_field)
    if not location.built:
        validate_texts(path, skip_bad_lines=settings.skip_bad_lines, text_field=settings.text_field)
    return location


def load_samples(settings: DataSettings, tokenizer: PreTrainedTokenizerFast,
                 cache_locations: tuple[TokenCacheLocation, ...], eval_cache_location: TokenCacheLocation | None,
                 local_rank: int, log: Callable[[str], None]) -> tuple[Dataset, PackedWindows | None]:
    """The token caches cut into training samples (a weighted mixture of them when the sources carry weights)
    and the eval windows, if any: ``eval_data_path``'s file, or the documents ``eval_fraction`` holds out of
    each source. ``cache_locations`` are ``cache_location``'s, one per data file; ``local_rank`` picks the
    file this rank builds first."""
    caches = training_caches(settings, tokenizer, cache_locations, local_rank, log)
    if settings.sources:
        by_path = dict(zip(settings.data_paths, caches, strict=True))
        corpora = [Corpus.of([by_path[path] for path in source.files]) for source in settings.sources]
        names = [source.name for source in settings.sources]
    else:
        corpora, names = [Corpus.of(caches)], [settings.description()]
    pieces = [source_samples(settings, corpus, name, tokenizer.pad_token_id)
              for corpus, name in zip(corpora, names, strict=True)]
    eval_windows = None
    if settings.eval_fraction:
        held_out = [held for _, held in pieces]
        stream = held_out[0] if len(held_out) == 1 else TokenSpans(held_out, [0] * len(held_out),
                                                                   [len(held) for held in held_out])
        eval_windows = PackedWindows(stream, settings.max_seq_len, pad_id=tokenizer.pad_token_id)
    elif settings.eval_data_path:
        eval_cache = build_or_load_token_cache(settings.eval_data_path, tokenizer,
                                               skip_bad_lines=settings.skip_bad_lines,
                                               workers=settings.tokenize_workers, log=log,
                                               location=eval_cache_location)
        eval_windows = PackedWindows(eval_cache.tokens, settings.max_seq_len, pad_id=tokenizer.pad_token_id)
    if not settings.is_mixture:
        return pieces[0][0], eval_windows
    sources = [MixtureSource(source.name, source.weight, samples)
               for source, (samples, _) in zip(settings.sources, pieces, strict=True)]
    return MixedSamples(sources, exhaust=settings.mixture_exhaust, seed=settings.seed), eval_windows


def source_samples(settings: DataSettings, corpus: Corpus, name: str,
                   pad_id: int) -> tuple[PackedWindows | PaddedDocuments, TokenSpans | None]:
    """One source's training samples and, with ``eval_fraction``, the tokens of its held-out documents."""
    documents, held_out = None, None
    if settings.eval_fraction:
        split = split_held_out(corpus.num_documents, settings.eval_fraction, name)
        documents = split.train
        held_out = document_stream(corpus.tokens, corpus.offsets, split.held_out)
    if not settings.packing:
        return PaddedDocuments(corpus.tokens, corpus.offsets, settings.max_seq_len, pad_id=pad_id,
                               documents=documents, rows=settings.padded_rows), held_out
    stream = corpus.tokens if documents is None else document_stream(corpus.tokens, corpus.offsets, documents)
    return PackedWindows(stream, settings.max_seq_len, pad_id=pad_id), held_out


def training_caches(settings: DataSettings, tokenizer: PreTrainedTokenizerFast,
                    cache_locations: tuple[TokenCacheLocation, ...], local_rank: int,
                    log: Callable[[str], None]) -> list[TokenCache]:
    """The token cache of every training file, in order (the bundled corpus's when none is named).

    Each rank starts with another file (its local rank's turn in the list), so that the ranks of a
    node build different caches at once, then loads the ones the others built. Files still to
    tokenize are spread over ``tokenize_workers`` processes per rank, which take work units of every
    file with all the other ranks' processes.
    """
    paths = settings.data_paths
    if not paths:
        return [build_or_load_token_cache(default_corpus_path(log=log), tokenizer,
                                          workers=settings.tokenize_workers, log=log)]
    return build_or_load_token_caches(paths, tokenizer, skip_bad_lines=settings.skip_bad_lines,
                                      workers=settings.tokenize_workers, first=local_rank % len(paths),
                                      log=log, locations=cache_locations)


def split_held_out(num_documents: int, fraction: float, data: str) -> DocumentSplit:
    """``split_documents``, its refusal (too few documents) as a one-line ``DataError`` naming the data."""
    try:
        return split_documents(num_documents, fraction)
    except ValueError as error:
        raise DataError("--eval_fraction", None, f"{data}: {error}") from None


# What one sample is called, by the data's kind (minimind.training.stages.Stage.data) and packing.
SAMPLE_NOUNS = {("documents", True): "packed windows", ("documents", False): "padded documents",
                ("conversations", True): "windows of packed conversations",
                ("conversations", False): "padded conversations",
                ("preferences", True): "preference pairs", ("preferences", False): "preference pairs"}


def training_data(dataset: Dataset, settings: DataSettings, micro_batch: int, accumulation: int, world: int,
                  rank: int, epochs: int, max_steps: int | None, pin_memory: bool,
                  log: Callable[[str], None], kind: str = "documents") -> TrainingData:
    """Rank ``rank`` of ``world``'s sampler and loader over ``dataset`` (samples of ``kind``: documents,
    conversations or preferences), and the optimizer steps to train: ``epochs`` epochs, cut at ``max_steps``
    when given."""
    sampler = RankInvariantSampler(
        len(dataset), micro_batch_size=micro_batch, accumulation_steps=accumulation,
        world_size=world, rank=rank, seed=settings.seed,
    )
    loader = make_data_loader(dataset, sampler, num_workers=settings.loader_workers, pin_memory=pin_memory)
    mixture = dataset if isinstance(dataset, MixedSamples) else None
    log(f"data: {len(dataset)} {SAMPLE_NOUNS[kind, settings.packing]}"
        f"{f' per epoch, mixed ({EXHAUST_MEANINGS[settings.mixture_exhaust]})' if mixture else ''}, "
        f"{sampler.steps_per_epoch} optimizer steps per epoch")
    for line in mixture.describe() if mixture else ():
        log(line)
    total_steps = sampler.steps_per_epoch * epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    return TrainingData(sampler, loader, epochs, total_steps, accumulation, log, mixture)
