"""Fixtures for the IXT dataset tests (helpers live in ``tests.helpers.dataset``)."""
import pytest

from megatron_ixt.data.dataset import IXTGPTDatasetConfig
from megatron_ixt.tokenizer import build_tokenizer
from tests.helpers.dataset import VOCAB, write_plain_store, write_shard_set


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(tokenizer_type="NullTokenizer", vocab_size=VOCAB)


@pytest.fixture
def make_shard_set(tmp_path, tokenizer):
    """``make_shard_set(name="corpus", num_documents=300, annotated=0.7, store=0, seed=0)``."""
    return lambda name="corpus", **kwargs: write_shard_set(str(tmp_path / name), tokenizer, **kwargs)


@pytest.fixture
def make_plain_store(tmp_path, tokenizer):
    """``make_plain_store(name="plain", num_documents=200, store=1, seed=1)``."""
    return lambda name="plain", **kwargs: write_plain_store(str(tmp_path / name), tokenizer, **kwargs)


@pytest.fixture
def config(tmp_path, tokenizer):
    """``config(**overrides)``: an IXTGPTDatasetConfig with small defaults and a per-test cache."""

    def make(**overrides):
        values = dict(random_seed=1234, sequence_length=64, tokenizer=tokenizer, reset_position_ids=False,
                      reset_attention_mask=False, eod_mask_loss=False, path_to_cache=str(tmp_path / "cache"),
                      split="100,0,0", drop_last_partial_validation_sequence=False)
        values.update(overrides)
        return IXTGPTDatasetConfig(**values)

    return make


@pytest.fixture
def process_group():
    """A real single-process gloo group (megatron-core's BlendedDataset asks torch.distributed for
    the rank whenever it caches indices, as Megatron-LM always runs distributed)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
