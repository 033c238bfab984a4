"""Pins the megatron-core private behaviour megatron_ixt.mcore_private relies on, on the installed
megatron-core (the module docstring says how 0.16-0.19 differ)."""
import numpy as np
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_ixt import mcore_private
from tests.helpers.dataset import build_dataset


def test_index_builders_shuffle_whole_epochs_deterministically():
    documents = np.arange(7, dtype=np.int32)
    first = mcore_private.build_document_index(documents, 3, np.random.RandomState(5), False)
    again = mcore_private.build_document_index(documents, 3, np.random.RandomState(5), False)
    assert np.array_equal(first, again) and first.dtype == np.int32
    assert sorted(first.tolist()) == sorted(documents.tolist() * 3)
    separate = mcore_private.build_document_index(documents, 3, np.random.RandomState(5), True)
    assert sorted(separate[-7:].tolist()) == documents.tolist()  # the final epoch is shuffled on its own
    shuffle = mcore_private.build_shuffle_index(10, 14, np.random.RandomState(5))
    assert sorted(shuffle[:10].tolist()) == list(range(10)) and sorted(shuffle[10:].tolist()) == list(range(10, 14))


def test_query_arity_matches_gpt_dataset(make_plain_store, config):
    """``QUERY_RETURNS_LENGTHS`` says what GPTDataset's own query returns, and IXTGPTDataset returns the same."""
    corpus = make_plain_store(num_documents=30)
    plain = build_dataset(corpus, config(), cls=GPTDataset)
    ixt = build_dataset(corpus, config(prefix_kind="none"))
    returned = plain._query_document_sample_shuffle_indices(0)
    assert len(returned) == (3 if mcore_private.QUERY_RETURNS_LENGTHS else 2)
    ours = ixt._query_document_sample_shuffle_indices(0)
    assert len(ours) == len(returned)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, returned))


def test_builder_internals(tmp_path):
    """``add_sequences`` (and ``add_sequences_from_file``) write the same .bin/.idx as one
    ``add_document`` per document; the raw tokens of ``write_raw_tokens`` are in the .bin but in no
    sequence; ``finalize_builder`` writes the index ``finalize`` writes; ``close_builder`` closes the .bin."""
    docs = [np.array(d, dtype=np.uint16) for d in ([1, 2, 3], [], [4], [5, 6])]
    one = IndexedDatasetBuilder(str(tmp_path / "one.bin"), dtype=np.uint16)
    for doc in docs:
        one.add_document(doc, [len(doc)])
    one.finalize(str(tmp_path / "one.idx"))
    many = IndexedDatasetBuilder(str(tmp_path / "many.bin"), dtype=np.uint16)
    mcore_private.add_sequences(many, np.concatenate(docs), [len(d) for d in docs])
    mcore_private.write_raw_tokens(many, np.zeros(1, np.uint16))
    mcore_private.finalize_builder(many, str(tmp_path / "many.idx"))
    assert (tmp_path / "one.idx").read_bytes() == (tmp_path / "many.idx").read_bytes()
    assert (tmp_path / "many.bin").read_bytes() == (tmp_path / "one.bin").read_bytes() + b"\0\0"
    store = IndexedDataset(str(tmp_path / "many"))
    assert [store[i].tolist() for i in range(len(store))] == [d.tolist() for d in docs]
    assert store.document_indices.tolist() == [0, 1, 2, 3, 4]

    # the same documents taken from a file of tokens (after 3 bytes that are not theirs), in two calls
    source = tmp_path / "tokens"
    source.write_bytes(b"xyz" + np.concatenate(docs).tobytes())
    copied = IndexedDatasetBuilder(str(tmp_path / "copied.bin"), dtype=np.uint16)
    with open(source, "rb") as f:
        mcore_private.add_sequences_from_file(copied, f.fileno(), 3, 6, [3, 0])
        mcore_private.add_sequences_from_file(copied, f.fileno(), 9, 6, [1, 2])
    mcore_private.write_raw_tokens(copied, np.zeros(1, np.uint16))
    mcore_private.finalize_builder(copied, str(tmp_path / "copied.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"copied{ext}").read_bytes() == (tmp_path / f"many{ext}").read_bytes()

    aborted = IndexedDatasetBuilder(str(tmp_path / "aborted.bin"), dtype=np.uint16)
    mcore_private.close_builder(aborted)
    assert aborted.data_file.closed


def test_finalize_builder_writes_megatron_cores_index(tmp_path):
    """Byte-identical .idx for a 4-byte dtype, multi-sequence documents and empty sequences."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 50, 3000).tolist()
    built = {}
    for name, finalize in (("mcore", lambda b, p: b.finalize(p)), ("ours", mcore_private.finalize_builder)):
        builder = IndexedDatasetBuilder(str(tmp_path / f"{name}.bin"), dtype=np.int32)
        for start in range(0, len(lengths), 3):
            group = lengths[start:start + 3]
            builder.add_document(np.ones(sum(group), np.int32), group)
        finalize(builder, str(tmp_path / f"{name}.idx"))
        built[name] = (tmp_path / f"{name}.idx").read_bytes()
    assert built["ours"] == built["mcore"]
    store = IndexedDataset(str(tmp_path / "ours"))  # kept: its index views die with its mmap
    assert store.index.sequence_pointers[-1] == 4 * sum(lengths[:-1])


def test_pad_token_and_subclass_hooks(make_plain_store, config):
    corpus = make_plain_store(num_documents=5)
    plain = build_dataset(corpus, config(sequence_length=512), cls=GPTDataset)  # one short, padded sample
    pad = mcore_private.pad_token_id(plain)
    tokens = plain._query_document_sample_shuffle_indices(len(plain) - 1)[0]
    assert int(tokens[-1]) == pad and pad not in np.concatenate(corpus.texts).tolist()
    assert plain[len(plain) - 1]["loss_mask"][-1] == 0  # GPTDataset keeps padding out of the loss
    for hook in ("_key_config_attributes", "_build_document_sample_shuffle_indices",
                 "_query_document_sample_shuffle_indices"):
        assert callable(getattr(GPTDataset, hook))


def test_route_cuda_rng_state():
    from megatron.core.tensor_parallel import random as mcore_random

    saved = mcore_random._get_cuda_rng_state, mcore_random._set_cuda_rng_state
    get_state, set_state = (lambda *a, **k: "state"), (lambda new_state, *a, **k: None)
    try:
        mcore_private.route_cuda_rng_state(get_state, set_state)
        assert mcore_random._get_cuda_rng_state is get_state and mcore_random._set_cuda_rng_state is set_state
    finally:
        mcore_random._get_cuda_rng_state, mcore_random._set_cuda_rng_state = saved


def test_null_tokenizer_library_matches_the_installed_megatron_core():
    """The library ``null_tokenizer_metadata`` names is one megatron-core lists, and the tokenizer built
    from it has EOD ``V`` and ``V + 1`` ids for our ``--vocab-size V``, whichever way the version counts EOD."""
    from megatron.core import package_info
    from megatron.core.tokenizers import MegatronTokenizer, megatron_tokenizer

    from megatron_ixt.tokenizer import build_tokenizer

    library, counts_eod = mcore_private.null_tokenizer_metadata()
    listed = getattr(megatron_tokenizer, "TEXT_LIBRARIES", None) or megatron_tokenizer.TOKENIZER_LIBRARIES
    assert library in listed
    major, minor = (int(p) for p in package_info.__version__.split(".")[:2])
    assert library == ("null-text" if (major, minor) >= (0, 17) else "null")
    assert counts_eod == ((major, minor) >= (0, 18))
    raw = MegatronTokenizer.from_pretrained(metadata_path={"library": library}, vocab_size=100)
    assert raw.vocab_size == (100 if counts_eod else 101)
    ours = build_tokenizer(tokenizer_type="NullTokenizer", vocab_size=100)
    assert (ours.eod, ours.vocab_size) == (100, 101)
    assert ours.tokenize("3 5 99") == [3, 5, 99]


def test_cpu_stream_stand_in_lets_a_gradient_sync_run():
    """On CPU, ``torch.cuda.current_stream()`` (called by megatron-core 0.19's ``start_grad_sync``)
    returns a stream whose waits do nothing, once ``megatron_ixt.compat`` is installed."""
    import torch

    from megatron_ixt import compat

    if not compat.install():
        import pytest

        pytest.skip("CUDA is available: the CPU layer is not installed")
    stream = torch.cuda.current_stream()
    stream.wait_event(object())
    stream.wait_stream(torch.cuda.current_stream())
    stream.synchronize()
