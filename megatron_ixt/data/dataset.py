"""The IXT-aware GPT dataset: every document is preceded by its feedback prefix.

``IXTGPTDataset`` is a megatron-core ``GPTDataset`` whose token stream is a shuffled sequence of
*conditioned documents* ``prefix + document`` (the document keeps its EOD when the text store has
one), packed into fixed-length samples by megatron-core's own C++ ``build_sample_idx``. The
document, sample and shuffle indices are built over the conditioned lengths, so no token is lost
and every document starts with its own prefix. It plugs into ``BlendedMegatronDatasetBuilder``
exactly like ``GPTDataset`` (blends, weights, splits, per-split blends, index cache).

Where prefixes come from (``docs/CONTRACTS.md`` section 2): a ``--data-path`` entry names a text
store ``P_text_document``; the ``P_<kind>_prefix`` store next to it holds one prefix per document
(length 0 = unannotated), for each kind listed in ``P_ixt.json``. A text store without
``P_ixt.json`` is a plain store: no prefixes.

With ``prefix_every_segment`` a sample that starts inside a document starts with that document's
prefix again (:func:`every_segment_sample_index` packs the samples; the reader re-inserts it).
:class:`PrefixCooldownDataset` switches a training split to prefix-free samples by sample index.

Samples (``docs/CONTRACTS.md`` section 3): ``GPTDataset``'s dict plus ``prefix_mask``, a float
tensor shaped like ``loss_mask``, 1.0 where ``labels[i]`` is a prefix token.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
from megatron.core.datasets import helpers
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split
from megatron.core.utils import log_single_rank

from megatron_ixt.data.options import NO_PREFIX, IXTOptions
from megatron_ixt.data.shards import metadata_path, prefix_store_path, read_metadata, shard_set_stem
from megatron_ixt.fileio import atomic_write
from megatron_ixt.mcore_private import QUERY_RETURNS_LENGTHS, build_document_index, build_shuffle_index, pad_token_id

logger = logging.getLogger(__name__)

# Salts that keep the per-document random decisions independent of each other.
_SALT_ANNOTATED = 0xA11
_SALT_DROPOUT = 0xD40

@dataclass
class IXTGPTDatasetConfig(GPTDatasetConfig, IXTOptions):
    """``GPTDatasetConfig`` plus the IXT options (keyword arguments, declared in
    ``megatron_ixt.data.options.IXTOptions``) and an evaluation-only steering prefix; all of them
    are part of the index cache key.

    ``prefix_dropout`` and ``annotated_fraction`` draw per document from ``random_seed``.
    """

    steering_prefix: tuple[int, ...] | None = None
    """Evaluation: condition every document (annotated or not, in IXT and plain stores alike) on
    these prefix tokens, e.g. ``steering.<kind>.tokens`` of ``P_ixt.json``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = self.problems()
        if problems:
            raise ValueError("IXTGPTDatasetConfig: " + "; ".join(problems))
        if self.steering_prefix is not None:
            self.steering_prefix = tuple(int(t) for t in self.steering_prefix)
            if self.prefix_kind == NO_PREFIX:
                raise ValueError("steering_prefix needs the prefix kind of the steering tokens, not 'none'")
            if self.prefix_dropout != 0.0 or self.annotated_fraction != 1.0:
                raise ValueError("steering_prefix conditions every document on the same prefix: set "
                                 "prefix_dropout=0.0 and annotated_fraction=1.0")
        if self.defer_npy_index_mmap:
            raise ValueError("IXTGPTDataset builds its indices eagerly; defer_npy_index_mmap is not supported")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def document_draws(seed: int, salt: int, document_ids: np.ndarray, probability: float,
                   epoch: int = 0) -> np.ndarray:
    """Deterministic Bernoulli(``probability``) draws, one per ``(seed, salt, document id, epoch)``:
    a splitmix64 hash of the four, compared as a 53-bit uniform."""
    key = (seed * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03 + epoch * 0xA0761D6478BD642F) % 2**64
    x = np.asarray(document_ids).astype(np.uint64) * np.uint64(0xE7037ED1A0B428DB) + np.uint64(key)
    return (_splitmix64(x) >> np.uint64(11)) < np.uint64(round(probability * 2**53))


def _open_prefix_store(dataset_path: str | None, text: IndexedDataset,
                       config: IXTGPTDatasetConfig) -> IndexedDataset | None:
    """The ``config.prefix_kind`` prefix store aligned with ``text``, or None for a plain store.

    The kinds a shard set holds are those listed in its ``P_ixt.json`` (sets written before a kind
    existed lack it: asking for it is an error naming the set)."""
    if config.prefix_kind == NO_PREFIX or config.steering_prefix is not None or dataset_path is None:
        return None
    kind = config.prefix_kind
    stem = shard_set_stem(dataset_path)
    if stem is None or not os.path.exists(metadata_path(stem)):
        log_single_rank(logger, logging.INFO, f"{dataset_path}: plain text store, documents get no prefix")
        return None
    kinds = read_metadata(stem)["kinds"]
    if kind not in kinds:
        raise FileNotFoundError(f"{dataset_path}: the shard set {metadata_path(stem)} holds the prefix kinds "
                                f"{kinds}, not {kind!r}; re-run tools/preprocess_ixt.py to add it")
    path = prefix_store_path(stem, kind)
    if not IndexedDataset.exists(path):
        raise FileNotFoundError(f"{dataset_path}: the shard set has {metadata_path(stem)} but no {kind} prefix "
                                f"store {path}.{{bin,idx}}")
    store = IndexedDataset(path, multimodal=False, mmap=config.mmap_bin_files)
    if store.sequence_lengths.shape[0] != text.sequence_lengths.shape[0]:
        raise ValueError(f"{path}: {store.sequence_lengths.shape[0]} prefixes for "
                         f"{text.sequence_lengths.shape[0]} documents in {dataset_path}; the stores are not aligned")
    return store


def reinserts_prefix(prefix_length: int, offset: int, length: int, sequence_length: int, extra: int) -> bool:
    """Whether a sample starting at ``offset`` of a conditioned document of ``length`` tokens (its
    prefix ``prefix_length`` of them) repeats the prefix (``prefix_every_segment``): when the sample
    starts inside the document and predicts at least one more of its tokens, and the prefix leaves
    room for the document in a sample (``prefix_length < sequence_length``)."""
    return 0 < prefix_length < sequence_length and 0 < offset and offset + extra < length


def every_segment_sample_index(lengths: np.ndarray, prefix_lengths: np.ndarray, sequence_length: int,
                               extra: int, drop_last: bool) -> np.ndarray:
    """megatron-core's ``build_sample_idx`` (identity document index, one pass) for samples that
    re-insert the prefix (:func:`reinserts_prefix`): such a sample holds the prefix, then
    ``sequence_length + extra - prefix`` tokens of the stream from ``max(offset, prefix)`` on.

    ``lengths``: conditioned length of each document-index position; returns int64 ``[samples + 1, 2]``
    rows (position, offset) with ``build_sample_idx``'s meaning. Without prefixes it equals
    ``build_sample_idx`` (tested).
    """
    lengths, prefix_lengths = lengths.tolist(), prefix_lengths.tolist()
    last = len(lengths) - 1
    rows = [(0, 0)]
    position, offset = 0, 0
    while not (position == last and lengths[last] - offset <= extra):  # until nothing is left to predict
        room = sequence_length + extra
        if reinserts_prefix(prefix_lengths[position], offset, lengths[position], sequence_length, extra):
            room -= prefix_lengths[position]
            offset = max(offset, prefix_lengths[position])
        while lengths[position] - offset < room and position < last:
            room -= lengths[position] - offset
            position, offset = position + 1, 0
        if lengths[position] - offset >= room:
            offset += room - extra
        elif drop_last:  # the stream ends inside this sample
            break
        else:
            offset = lengths[last] - extra
        rows.append((position, offset))
    return np.array(rows, dtype=np.int64)


class PrefixCooldownDataset(torch.utils.data.Dataset):
    """A training split whose samples ``[0, first_plain_sample)`` come from ``conditioned`` and the
    later ones from ``plain``, the same split packed without prefixes (``prefix_cooldown_fraction``).

    The switch depends on the sample index alone, so a run resumed at any sample reads exactly what
    an uninterrupted run reads, and any loop that draws samples by index (ours, Megatron-LM's)
    gets the cooldown.
    """

    def __init__(self, conditioned, plain, first_plain_sample: int) -> None:
        self.conditioned, self.plain, self.first_plain_sample = conditioned, plain, first_plain_sample

    def __len__(self) -> int:
        return min(len(self.conditioned), len(self.plain))

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return (self.plain if idx >= self.first_plain_sample else self.conditioned)[idx]


def cooldown_start_sample(fraction: float, train_samples: int, global_batch_size: int = 1) -> int:
    """The first sample of the prefix-free cooldown: the last ``round(fraction * iterations)`` of
    the ``train_samples // global_batch_size`` iterations are the cooldown."""
    iterations = train_samples // global_batch_size
    return (iterations - round(fraction * iterations)) * global_batch_size


class IXTGPTDataset(GPTDataset):
    """A ``GPTDataset`` over conditioned documents ``prefix + document``.

    Besides GPTDataset's indices it keeps ``prefix_length``: for each position of
    ``document_index``, the number of prefix tokens in front of that document occurrence (0 when
    the document is unannotated, dropped for that epoch, or ``prefix_kind`` is ``none``).
    The sample index counts offsets into the conditioned document (prefix first).
    """

    def __init__(self, indexed_dataset: IndexedDataset, dataset_path: str | None,
                 indexed_indices: np.ndarray, num_samples: int | None, index_split: Split,
                 config: IXTGPTDatasetConfig) -> None:
        if config.prefix_cooldown_fraction:
            raise ValueError("prefix_cooldown_fraction switches a whole training split (blend) to prefix-free "
                             "samples: build through megatron_ixt.data.provider.build_train_valid_test_datasets")
        self.prefix_dataset = _open_prefix_store(dataset_path, indexed_dataset, config)
        self.steering_tokens = (None if config.steering_prefix is None
                                else np.asarray(config.steering_prefix, dtype=np.int64))
        self.prefix_length: np.ndarray | None = None  # set by _build_document_sample_shuffle_indices
        self._last_prefix_flags: np.ndarray | None = None
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)

    @staticmethod
    def _key_config_attributes():
        return GPTDataset._key_config_attributes() + [f.name for f in fields(IXTOptions)] + [
            "steering_prefix", "add_extra_token_to_sequence"]

    # ---------------------------------------------------------------- prefixes per document

    def document_prefix_lengths(self) -> np.ndarray:
        """int32 [num documents in the store]: prefix length of each document before dropout."""
        num_documents = self.dataset.sequence_lengths.shape[0]
        if self.steering_tokens is not None:
            return np.full(num_documents, len(self.steering_tokens), dtype=np.int32)
        if self.prefix_dataset is None:
            return np.zeros(num_documents, dtype=np.int32)
        lengths = np.array(self.prefix_dataset.sequence_lengths, dtype=np.int32)
        if self.config.annotated_fraction < 1.0:
            used = document_draws(self.config.random_seed, _SALT_ANNOTATED, np.arange(num_documents),
                                  self.config.annotated_fraction)
            lengths[~used] = 0
        return lengths

    def _epoch_prefix_lengths(self, document_ids: np.ndarray, epoch: int,
                              document_prefix_lengths: np.ndarray) -> np.ndarray:
        """Prefix length of each document in epoch ``epoch``, after prefix dropout."""
        lengths = document_prefix_lengths[document_ids]
        if self.config.prefix_dropout > 0.0:
            dropped = document_draws(self.config.random_seed, _SALT_DROPOUT, document_ids,
                                     self.config.prefix_dropout, epoch)
            lengths[dropped] = 0
        return lengths

    # ---------------------------------------------------------------- indices

    def _build_document_sample_shuffle_indices(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """GPTDataset's document/sample/shuffle indices over conditioned document lengths.

        Same RNG draws as GPTDataset (so ``prefix_kind='none'`` reproduces it exactly); the
        ``build_sample_idx`` C++ helper runs over per-position sizes with an identity document
        index, so ``sample_index`` keeps GPTDataset's meaning (position in ``document_index``,
        token offset). Cached like GPTDataset's, plus a ``prefix_length`` array.
        """
        path_to_cache = self.config.path_to_cache
        if path_to_cache is None and not self.config.mock:
            path_to_cache = os.path.join(self.dataset.path_prefix, "cache", f"{type(self).__name__}_indices")

        names = ("document_index", "prefix_length", "sample_index", "shuffle_index")
        if path_to_cache:
            base = os.path.join(path_to_cache,
                                f"{self.unique_description_hash}-{type(self).__name__}-{self.index_split.name}")
            path_to_description = f"{base}-description.txt"
            paths = {name: f"{base}-{name}.npy" for name in names}
            cache_hit = self.config.fast_cache_load or all(
                map(os.path.isfile, [path_to_description, *paths.values()]))
        else:
            cache_hit = False

        if path_to_cache and (cache_hit or (torch.distributed.is_initialized()
                                            and torch.distributed.get_rank() != 0)):
            log_single_rank(logger, logging.INFO,
                            f"Load the {type(self).__name__} {self.index_split.name} indices from {base}-*")
            # plain ndarray views of the memory maps: slicing a numpy.memmap per sample is slow
            arrays = {name: np.asarray(np.load(path, mmap_mode="r"))
                      for name, path in paths.items()}
        else:
            t_beg = time.time()
            arrays = dict(zip(names, self._build_indices()))
            if path_to_cache:
                os.makedirs(path_to_cache, exist_ok=True)
                # each file renamed into place: runs that share a cache (a sweep's array tasks) may
                # build the same indices at once, and one must never read another's half-written file
                for name, path in paths.items():
                    with atomic_write(path, "wb") as f:
                        np.save(f, arrays[name])
                # last: marks the cache complete
                with atomic_write(path_to_description) as f:
                    f.write(self.unique_description)
            log_single_rank(logger, logging.INFO,
                            f"Built the {type(self).__name__} {self.index_split.name} indices in "
                            f"{time.time() - t_beg:.2f} s")

        log_single_rank(logger, logging.INFO,
                        f"> total number of samples: {arrays['sample_index'].shape[0] - 1}")
        self.prefix_length = arrays["prefix_length"]
        if path_to_cache and cache_hit:
            self._check_cached_prefix_lengths(arrays["document_index"], base)
        return arrays["document_index"], arrays["sample_index"], arrays["shuffle_index"]

    def _check_cached_prefix_lengths(self, document_index: np.ndarray, base: str) -> None:
        """Refuse a cached index whose prefix lengths no longer match the prefix store (e.g. the
        shard set was preprocessed again under the same name)."""
        expected = self.document_prefix_lengths()[document_index]
        if np.any((self.prefix_length != 0) & (self.prefix_length != expected)):
            raise ValueError(f"{base}-*.npy: the cached index does not match the prefix store of "
                             f"{self.dataset_path} (rebuilt shards?); delete these cache files")

    def _build_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(document_index, prefix_length, sample_index, shuffle_index), freshly computed.

        The number of epochs comes from token counts, as in GPTDataset; prefixes re-inserted by
        ``prefix_every_segment`` take room those counts do not know of, so then one more epoch is
        added until ``num_samples`` samples exist."""
        min_epochs = 1
        while True:
            num_epochs, indices = self._build_indices_over_epochs(min_epochs)
            if self.num_samples is None or len(indices[2]) - 1 >= self.num_samples:
                return indices
            min_epochs = num_epochs + 1

    def _build_indices_over_epochs(self, min_epochs: int):
        """``(epochs, (document_index, prefix_length, sample_index, shuffle_index))`` over at least
        ``min_epochs`` epochs and enough tokens for ``num_samples``."""
        sequence_length = self.config.sequence_length
        extra = int(self.config.add_extra_token_to_sequence)
        text_lengths = np.array(self.dataset.sequence_lengths)  # in memory: gathered at random below
        document_prefix_lengths = self.document_prefix_lengths()
        documents = np.asarray(self.indices)
        text_tokens_per_epoch = int(np.sum(text_lengths[documents], dtype=np.int64))

        # Epochs needed for num_samples (as GPTDataset._get_num_epochs, with per-epoch token counts).
        epoch_prefix_lengths, tokens_per_epoch = [], []  # [epoch][i]: prefix length of documents[i]
        requested = None if self.num_samples is None else self.num_samples * sequence_length + extra
        total_tokens = 0
        while len(tokens_per_epoch) < min_epochs or (requested is not None and total_tokens < requested):
            if self.config.prefix_dropout == 0.0 and tokens_per_epoch:
                lengths = epoch_prefix_lengths[0]
            else:
                lengths = self._epoch_prefix_lengths(documents, len(tokens_per_epoch), document_prefix_lengths)
            epoch_tokens = text_tokens_per_epoch + int(np.sum(lengths, dtype=np.int64))
            if epoch_tokens <= extra:
                raise ValueError(f"{self.dataset_path}: the {self.index_split.name} split has no tokens")
            epoch_prefix_lengths.append(lengths)
            tokens_per_epoch.append(epoch_tokens)
            total_tokens += epoch_tokens
        num_epochs = len(tokens_per_epoch)

        separate_final_epoch = False
        if num_epochs > 1:
            num_samples_sans_final_epoch = (total_tokens - tokens_per_epoch[-1] - extra) // sequence_length
            num_samples_per_epoch = (tokens_per_epoch[-1] - extra) // sequence_length
            separate_final_epoch = (self.num_samples - num_samples_sans_final_epoch) < int(
                0.80 * num_samples_per_epoch)

        numpy_random_state = np.random.RandomState(self.config.random_seed)
        document_index = build_document_index(documents, num_epochs, numpy_random_state, separate_final_epoch)

        if self.config.prefix_dropout == 0.0:
            prefix_length = document_prefix_lengths[document_index]
        else:
            # epoch_prefix_lengths is over `documents`; the epoch of an occurrence is its rank
            # among the occurrences of the same document.
            local = np.empty(len(text_lengths), dtype=np.int64)
            local[documents] = np.arange(len(documents))
            local = local[document_index]
            if num_epochs > 1:
                epochs = np.empty(len(document_index), dtype=np.int64)
                epochs[np.argsort(document_index, kind="stable")] = np.arange(len(document_index)) % num_epochs
                local += epochs * len(documents)
            prefix_length = np.concatenate(epoch_prefix_lengths)[local]
        conditioned_lengths = (text_lengths[document_index] + prefix_length).astype(np.int32)

        drop_last = self.config.drop_last_partial_validation_sequence if self.index_split == Split.valid else True
        if self.config.prefix_every_segment and prefix_length.any():
            sample_index = every_segment_sample_index(conditioned_lengths, prefix_length, sequence_length, extra,
                                                      drop_last)
            if separate_final_epoch:  # the samples that end before the final epoch's first document
                num_samples_sans_final_epoch = int(np.searchsorted(
                    sample_index[1:, 0], len(documents) * (num_epochs - 1), side="left"))
        else:
            sample_index = helpers.build_sample_idx(
                conditioned_lengths,
                np.arange(len(document_index), dtype=np.int32),
                sequence_length,
                1,
                total_tokens,
                drop_last,
                self.config.add_extra_token_to_sequence,
            )
        num_samples = sample_index.shape[0] - 1
        shuffle_index = build_shuffle_index(
            num_samples_sans_final_epoch if separate_final_epoch else num_samples, num_samples, numpy_random_state)
        log_single_rank(logger, logging.INFO, f"> total number of epochs: {num_epochs}")
        return num_epochs, (document_index, prefix_length, sample_index, shuffle_index)

    # ---------------------------------------------------------------- samples

    def _prefix_tokens(self, document_id: int, offset: int, length: int) -> np.ndarray:
        if self.steering_tokens is not None:
            return self.steering_tokens[offset:offset + length]
        return self.prefix_dataset.get(document_id, offset=offset, length=length)

    def _query_document_sample_shuffle_indices(self, idx: int):
        """Tokens of sample ``idx`` (conditioned documents, padded), their document ids, and, on
        megatron-core >= 0.19, the token count of each conditioned document part.

        Also keeps the sample's per-token prefix flags for ``__getitem__`` (``_last_prefix_flags``).
        """
        extra = int(self.config.add_extra_token_to_sequence)
        sample_length = self.config.sequence_length + extra
        sample = self.shuffle_index[idx]
        beg, beg_offset = self.sample_index[sample].tolist()
        end, end_offset = self.sample_index[sample + 1].tolist()
        document_ids = self.document_index[beg:end + 1]
        prefix_lengths = self.prefix_length[beg:end + 1].tolist()

        parts, document_lengths = [], []
        flags = np.zeros(sample_length, dtype=bool)
        cursor, last = 0, end - beg
        for i, (document_id, prefix_len) in enumerate(zip(document_ids.tolist(), prefix_lengths)):
            start = beg_offset if i == 0 else 0
            stop = end_offset + extra if i == last else None  # None: to the end of the document
            n = 0
            if i == 0 and self.config.prefix_every_segment and reinserts_prefix(
                    prefix_len, start, prefix_len + int(self.dataset.sequence_lengths[document_id]),
                    self.config.sequence_length, extra):
                parts.append(self._prefix_tokens(document_id, 0, prefix_len))
                flags[:prefix_len] = True
                n, start = prefix_len, max(start, prefix_len)
            if start < prefix_len:
                prefix_stop = prefix_len if stop is None else min(stop, prefix_len)
                parts.append(self._prefix_tokens(document_id, start, prefix_stop - start))
                n = prefix_stop - start
                flags[cursor:cursor + n] = True
            if stop is None or stop > prefix_len:
                text_offset = max(start - prefix_len, 0)
                text = self.dataset.get(document_id, offset=text_offset,
                                        length=None if stop is None else stop - prefix_len - text_offset)
                parts.append(text)
                n += len(text)
            document_lengths.append(n)
            cursor += n

        if cursor < sample_length:
            parts.append(np.full(sample_length - cursor, pad_token_id(self), dtype=np.int64))
        self._last_prefix_flags = flags
        tokens = np.concatenate(parts, dtype=np.int64)
        document_ids = document_ids.astype(np.int64)
        if QUERY_RETURNS_LENGTHS:
            return tokens, document_ids, document_lengths
        return tokens, document_ids

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        """GPTDataset's sample dict plus ``prefix_mask`` (float, shaped like ``loss_mask``: 1.0
        where ``labels[i]`` is a prefix token). With ``prefix_loss='mask'`` the loss mask is 0 there."""
        sample = super().__getitem__(idx)
        flags = self._last_prefix_flags[1:]  # flags of the label tokens
        if not self.config.add_extra_token_to_sequence:
            flags = np.append(flags, False)  # the last label is padding
        sample["prefix_mask"] = torch.from_numpy(flags.astype(np.float32))
        if self.config.prefix_loss == "mask":  # not in place: GPTDataset may return its cached mask
            sample["loss_mask"] = sample["loss_mask"].masked_fill(torch.from_numpy(flags), 0.0)
        return sample
