"""Pretraining data: the default corpus, JSON Lines reading, the token cache, samples and their dealing.

The pipeline: ``build_or_load_token_cache(path, tokenizer)`` tokenizes a data file once;
``PackedWindows`` (or ``PaddedDocuments``) turns the cache into samples;
``split_documents`` and ``document_stream`` hold documents out for validation;
``MixedSamples`` mixes several sources by weight; ``RankInvariantSampler`` deals samples to ranks;
``make_data_loader`` batches them. ``minimind.data.pipeline`` runs these steps for a run, from its data
section (``DataSettings``) to each rank's loader and the evaluation windows.
"""

from minimind.data.cache_root import cache_root
from minimind.data.corpus import Corpus, DataSource, data_files, data_sources, source_files
from minimind.data.default_corpus import build_corpus, default_corpus_path
from minimind.data.held_out import DocumentSplit, document_stream, split_documents
from minimind.data.jsonl_reader import DataError, JsonlTextReader, ReadCounts
from minimind.data.loader import make_data_loader
from minimind.data.mixture import EXHAUST_MEANINGS, EXHAUST_POLICIES, MixedSamples, MixtureSource
from minimind.data.parquet_reader import ParquetTextReader
from minimind.data.sampler import RankInvariantSampler, check_fills_one_global_batch
from minimind.data.text_sources import DATA_SUFFIXES, text_reader, validate_texts
from minimind.data.token_cache import (
    TokenCache,
    TokenCacheLocation,
    build_or_load_token_cache,
    build_or_load_token_caches,
    token_cache_location,
)
from minimind.data.token_spans import TokenSpans
from minimind.data.windows import IGNORE_INDEX, PackedWindows, PaddedDocuments, RepeatedSamples

__all__ = [
    "Corpus",
    "DATA_SUFFIXES",
    "DataError",
    "DataSource",
    "EXHAUST_MEANINGS",
    "EXHAUST_POLICIES",
    "MixedSamples",
    "MixtureSource",
    "DocumentSplit",
    "TokenSpans",
    "IGNORE_INDEX",
    "JsonlTextReader",
    "PackedWindows",
    "ParquetTextReader",
    "PaddedDocuments",
    "RankInvariantSampler",
    "ReadCounts",
    "RepeatedSamples",
    "TokenCache",
    "TokenCacheLocation",
    "build_corpus",
    "check_fills_one_global_batch",
    "build_or_load_token_cache",
    "build_or_load_token_caches",
    "cache_root",
    "data_files",
    "data_sources",
    "default_corpus_path",
    "document_stream",
    "make_data_loader",
    "source_files",
    "split_documents",
    "text_reader",
    "token_cache_location",
    "validate_texts",
]
