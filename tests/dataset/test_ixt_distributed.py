"""Two real gloo processes build the same blend: rank 0 builds the indices, rank 1 loads them."""
import os

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_ixt.distributed import free_port


def _worker(rank, port, paths, cache, out):
    from megatron_ixt.data import IXTGPTDatasetConfig, build_train_valid_test_datasets
    from megatron_ixt.tokenizer import build_tokenizer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        config = IXTGPTDatasetConfig(
            random_seed=11, sequence_length=32,
            tokenizer=build_tokenizer(tokenizer_type="NullTokenizer", vocab_size=1000),
            reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, path_to_cache=cache,
            blend=(paths, [0.5, 0.5]), split="90,10,0", prefix_kind="critique", prefix_dropout=0.2)
        train, valid, _ = build_train_valid_test_datasets(config, [120, 12, 0])
        arrays = {f"{split}_{i}_{key}": np.asarray(value)
                  for split, dataset in (("train", train), ("valid", valid))
                  for i in range(len(dataset)) for key, value in dataset[i].items()}
        np.savez(os.path.join(out, f"rank{rank}.npz"), **arrays)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_every_sample(make_shard_set, make_plain_store, tmp_path):
    corpus, plain = make_shard_set(num_documents=300), make_plain_store(num_documents=200)
    port = free_port()
    mp.start_processes(_worker, args=(port, [corpus.path, plain.path], str(tmp_path / "cache"), str(tmp_path)),
                       nprocs=2, start_method="spawn")
    rank0, rank1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    assert sorted(rank0.files) == sorted(rank1.files) and any(k.endswith("prefix_mask") for k in rank0.files)
    for key in rank0.files:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    assert any(rank0[k].any() for k in rank0.files if k.endswith("prefix_mask"))
    cached = os.listdir(tmp_path / "cache")
    assert any(name.endswith("IXTGPTDataset-train-prefix_length.npy") for name in cached)
