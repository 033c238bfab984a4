"""megatron_ixt.megatron_lm: Megatron-LM's own loop (megatron.training) with IXT data, on CPU.

``pretrain()`` itself stops at "Megatron requires CUDA" on CPU (tests/gpu/run.sh runs it on a GPU);
these tests go as far as megatron.training goes without one: its flag parsing and validation with our
flags, ``initialize_megatron(allow_no_cuda=True)`` with the model-parallel groups set up by hand,
datasets built through its data-loader path and our provider by its builder, a CPU GPTModel built by
its ``GPTModelConfig`` builder, one forward/loss through megatron-core's forward-only schedule, and
the conditioning evaluation. Skipped (with the reason) on a megatron-core without 0.19's megatron.training.
"""
from __future__ import annotations

import os
from functools import partial

import pytest
import torch

from megatron_ixt import mcore_private

UNSUPPORTED = mcore_private.megatron_lm_unsupported()
pytestmark = pytest.mark.skipif(UNSUPPORTED is not None, reason=str(UNSUPPORTED))

SEQ = 64


def model_flags(data_path: str, *tokenizer: str) -> list:
    """A tiny CPU model's Megatron-LM flags (no fusions, no dropout) on ``data_path``."""
    return ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", str(SEQ),
            "--max-position-embeddings", str(SEQ), "--micro-batch-size", "2", "--global-batch-size", "4",
            "--train-iters", "4", "--lr", "1e-3", "--eval-iters", "2", "--eval-interval", "2", "--seed", "1234",
            "--data-path", data_path, "--split", "90,10,0", "--distributed-backend", "gloo",
            "--transformer-impl", "local", "--use-cpu-initialization", "--no-gradient-accumulation-fusion",
            "--no-masked-softmax-fusion", "--no-bias-gelu-fusion", "--no-bias-dropout-fusion", "--no-rope-fusion",
            "--no-persist-layer-norm", "--attention-dropout", "0", "--hidden-dropout", "0",
            "--calculate-per-token-loss", *tokenizer]


def sp_flags(shards) -> list:
    return ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", shards.tokenizer_model]


@pytest.fixture
def megatron_lm(tmp_path):
    """megatron_ixt.megatron_lm; megatron.training's global state and the process groups are torn down after."""
    from megatron.training.training import destroy_global_state

    from megatron_ixt import megatron_lm as module

    yield module
    destroy_global_state()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def initialize(args) -> None:
    """What pretrain() does before building the model, minus CUDA: process groups (by hand: without
    CUDA ``initialize_megatron`` skips the model-parallel setup), Megatron-LM's init, seeds."""
    from megatron.training import get_args
    from megatron.training.initialize import initialize_megatron

    from megatron_ixt.distributed import init_distributed, set_seed

    init_distributed(args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    initialize_megatron(allow_no_cuda=True)
    set_seed(args.seed)
    # set by pretrain() before it builds the data loaders
    get_args().iteration, get_args().consumed_train_samples, get_args().consumed_valid_samples = 0, 0, 0


def test_flags_round_trip(megatron_lm, ixt_shard_set):
    ixt = ["--ixt-prefix-kind", "quality", "--ixt-prefix-loss", "mask", "--ixt-prefix-dropout", "0.25",
           "--ixt-annotated-fraction", "0.5"]
    args = megatron_lm.parse_args(model_flags(ixt_shard_set.prefix + "_text_document", *sp_flags(ixt_shard_set))
                                  + ixt)
    assert (args.ixt_prefix_kind, args.ixt_prefix_loss, args.ixt_prefix_dropout, args.ixt_annotated_fraction) \
        == ("quality", "mask", 0.25, 0.5)
    assert args.num_layers == 2 and args.seq_length == SEQ  # Megatron-LM's own flags beside ours
    from megatron.training import get_tokenizer

    config = megatron_lm.dataset_config_from_args(args, get_tokenizer())
    assert (config.prefix_kind, config.prefix_loss, config.prefix_dropout, config.annotated_fraction) \
        == ("quality", "mask", 0.25, 0.5)
    assert config.blend == ([ixt_shard_set.prefix + "_text_document"], None) and config.sequence_length == SEQ


@pytest.mark.parametrize("flag", ["--sft", "--dataloader-inter-document-masking"])
def test_unsupported_data_mode_refused(megatron_lm, ixt_shard_set, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        megatron_lm.parse_args(model_flags(ixt_shard_set.prefix + "_text_document", *sp_flags(ixt_shard_set))
                               + [flag])
    assert exit_info.value.code == 2
    assert f"{flag} not supported" in capsys.readouterr().err


def test_null_tokenizer_vocab_rule(megatron_lm, synth_data, capsys):
    """A shard set written with our NullTokenizer --vocab-size V (EOD V) is read by Megatron-LM 0.17+
    with --vocab-size V+1; V is refused with a message naming V+1."""
    from megatron.training import get_tokenizer
    from megatron.training.training import destroy_global_state

    from tests.helpers.training_corpus import VOCAB

    megatron_lm.parse_args(model_flags(synth_data, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB)))
    tokenizer = get_tokenizer()
    _, counts_eod = mcore_private.null_tokenizer_metadata()
    assert counts_eod and (tokenizer.vocab_size, tokenizer.eod) == (VOCAB, VOCAB - 1)
    with pytest.raises(ValueError, match=f"pass --vocab-size {VOCAB + 1} "):
        megatron_lm.check_shard_tokenizer([synth_data], tokenizer)
    destroy_global_state()

    megatron_lm.parse_args(model_flags(synth_data, "--tokenizer-type", "NullTokenizer", "--vocab-size",
                                       str(VOCAB + 1)))
    assert get_tokenizer().eod == VOCAB
    megatron_lm.check_shard_tokenizer([synth_data], get_tokenizer())
    destroy_global_state()

    # the entry point refuses before training: bad flags, exit status 2
    assert megatron_lm.main(model_flags(synth_data, "--tokenizer-type", "NullTokenizer", "--vocab-size",
                                        str(VOCAB))) == 2
    assert f"pass --vocab-size {VOCAB + 1} " in capsys.readouterr().err


def test_datasets_forward_loss_and_eval_match_trainer(megatron_lm, ixt_shard_set):
    """Megatron-LM's data path builds IXT datasets through its builder; one batch through a CPU GPTModel
    gives the trainer's lm loss / doc_loss / prefix_loss; the conditioning eval equals the trainer's."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.num_microbatches_calculator import get_num_microbatches
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.rerun_state_machine import get_rerun_state_machine
    from megatron.training import get_tokenizer
    from megatron.training.argument_utils import gpt_config_from_args
    from megatron.training.training import build_train_valid_test_data_iterators, build_train_valid_test_datasets

    from megatron_ixt.data.dataset import IXTGPTDataset
    from megatron_ixt.evaluation import heldout
    from megatron_ixt.training import trainer

    data = ixt_shard_set.prefix + "_text_document"
    args = megatron_lm.parse_args(model_flags(data, *sp_flags(ixt_shard_set)) + ["--ixt-prefix-kind", "critique"])
    megatron_lm.check_shard_tokenizer([data], get_tokenizer())
    initialize(args)

    train, valid, test = build_train_valid_test_datasets(megatron_lm.train_valid_test_datasets_provider)
    assert isinstance(train, IXTGPTDataset) and isinstance(valid, IXTGPTDataset) and test is None  # --split 90,10,0
    assert train.config.prefix_kind == "critique" and len(train) >= args.train_iters * args.global_batch_size
    train_it, _, _ = build_train_valid_test_data_iterators(megatron_lm.train_valid_test_datasets_provider)
    batch = next(train_it)  # Megatron-LM's sampler and DataLoader over our samples
    assert set(batch) >= {"tokens", "labels", "loss_mask", "position_ids", "prefix_mask"}
    assert batch["prefix_mask"].shape == (2, SEQ) and 0 < batch["prefix_mask"].sum() < 2 * SEQ

    model_config = gpt_config_from_args(args)
    model = model_config.get_builder_cls()(model_config).build_model(ProcessGroupCollection.use_mpu_process_groups())
    assert isinstance(model, GPTModel)
    model.eval()
    schedule = dict(model=[model], num_microbatches=1, seq_length=SEQ, micro_batch_size=2, forward_only=True)
    rerun = get_rerun_state_machine()  # as Megatron-LM's train_step: the loss checks run inside it
    while rerun.should_run_forward_backward(None):
        ours = get_forward_backward_func()(forward_step_func=megatron_lm.forward_step,
                                           data_iterator=iter([batch]), **schedule)
    reference = get_forward_backward_func()(forward_step_func=trainer.forward_step, data_iterator=iter([batch]),
                                            **schedule)
    assert len(ours) == len(reference) == 1
    for key, ref in (("lm loss", "loss"), ("doc_loss", "doc"), ("prefix_loss", "prefix")):
        torch.testing.assert_close(ours[0][key], reference[0][ref])
    assert ours[0]["prefix_loss"][1] == batch["prefix_mask"].sum() and ours[0]["prefix_loss"][0] > 0
    torch.testing.assert_close(ours[0]["doc_loss"] + ours[0]["prefix_loss"], ours[0]["lm loss"])

    # the conditioning evaluation: the trainer's loop, datasets and conditionings
    evaluation = megatron_lm.ConditioningEval()
    result = evaluation([model])
    assert set(result) == {"prefix/doc_loss", "none/doc_loss", "steering/doc_loss", "prefix/prefix_loss"}
    config = megatron_lm.dataset_config_from_args(args, get_tokenizer())
    steer = megatron_lm.steering_prefix([data], "critique")
    datasets = megatron_lm.valid_datasets(megatron_lm.conditioning_configs(config, steer),
                                          args.eval_iters * args.global_batch_size)
    streams = {name: trainer.MicroBatches(ds, 0, args.micro_batch_size, 0, 1, torch.device("cpu"))
               for name, ds in datasets.items()}
    expected = heldout.summary(heldout.evaluate(
        model, get_forward_backward_func(), partial(trainer.forward_step, loss=heldout.eval_loss_func),
        streams, iters=args.eval_iters, num_microbatches=get_num_microbatches(), micro_batch_size=2,
        seq_length=SEQ, device=torch.device("cpu")))
    assert result == pytest.approx(expected, rel=1e-6)
    assert len({round(v, 6) for v in result.values()}) == len(result)  # the conditionings differ


def _tp_worker(rank: int, port: int, flags: list, out: str) -> None:
    """One rank of a TP=2 world: get_batch with the batch on rank 0 only; saves what this rank got."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      CUDA_DEVICE_MAX_CONNECTIONS="1",  # Megatron-LM requires it with TP > 1
                      MASTER_PORT=str(port))
    from megatron.training import arguments

    from megatron_ixt import megatron_lm

    # with TP > 1 Megatron-LM's validation asks the GPU's architecture (for CUDA_DEVICE_MAX_CONNECTIONS
    # advice): what a CPU cannot answer; say Hopper
    arguments.get_device_arch_version = lambda: 9
    args = megatron_lm.parse_args(flags + ["--tensor-model-parallel-size", "2"])
    initialize(args)
    iterator = None
    if rank == 0:
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 1000, (2, SEQ + 1), generator=g)
        # contiguous, as the data loader's collated batches are (gloo sends a strided view's storage)
        sample = {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
                  "loss_mask": (torch.rand(2, SEQ, generator=g) > 0.1).float(),
                  "prefix_mask": (torch.rand(2, SEQ, generator=g) > 0.7).float(),
                  "position_ids": torch.arange(SEQ).repeat(2, 1),
                  "attention_mask": torch.ones(2, 1, SEQ, SEQ, dtype=torch.bool).triu(1)}
        iterator = iter([sample])
    batch = megatron_lm.get_batch(iterator)
    torch.save({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, os.path.join(out, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_get_batch_broadcasts_prefix_mask_over_tensor_parallel_ranks(ixt_shard_set, tmp_path):
    """TP=2 on two gloo processes: rank 1 reads no data and gets rank 0's batch, prefix_mask included."""
    import torch.multiprocessing as mp

    from megatron_ixt.distributed import free_port

    flags = model_flags(ixt_shard_set.prefix + "_text_document", *sp_flags(ixt_shard_set))
    mp.start_processes(_tp_worker, args=(free_port(), flags, str(tmp_path)), nprocs=2, start_method="spawn")
    first, second = (torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1))
    assert set(first) == set(second) >= {"tokens", "labels", "loss_mask", "position_ids", "attention_mask",
                                         "prefix_mask"}
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0)
    assert 0 < first["prefix_mask"].sum() < first["prefix_mask"].numel()


def test_pretrain_needs_cuda_on_cpu(megatron_lm, ixt_shard_set):
    """The entry point goes through parsing and the checks into pretrain(), which refuses a CPU."""
    if torch.cuda.is_available():
        pytest.skip("has CUDA: tests/gpu/run.sh runs pretrain()")
    with pytest.raises(AssertionError, match="Megatron requires CUDA"):
        megatron_lm.main(model_flags(ixt_shard_set.prefix + "_text_document", *sp_flags(ixt_shard_set)))


def test_help_lists_both_flag_sets(megatron_lm, capsys):
    """--help prints (Megatron-LM 0.19.2's own parser cannot: a help text with a bare '%')."""
    with pytest.raises(SystemExit) as exit_info:
        megatron_lm.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--ixt-prefix-kind" in out and "--tensor-model-parallel-size" in out and "10%)" in out


def test_args_files(megatron_lm, ixt_shard_set, tmp_path):
    """@FILE reads flags as python -m megatron_ixt.pretrain does (examples/slurm passes @MODEL_ARGS @ARM_ARGS)."""
    model = tmp_path / "model.args"
    model.write_text("# a comment line\n" + " ".join(model_flags(ixt_shard_set.prefix + "_text_document",
                                                                  *sp_flags(ixt_shard_set))) + "  # trailing\n")
    arm = tmp_path / "arm.args"
    arm.write_text("--ixt-prefix-kind quality # the arm\n--ixt-prefix-dropout 0.5\n")
    args = megatron_lm.parse_args([f"@{model}", f"@{arm}", "--num-layers", "3"])
    assert (args.ixt_prefix_kind, args.ixt_prefix_dropout, args.num_layers, args.hidden_size) == ("quality", 0.5, 3, 64)


def test_stop_status(megatron_lm, ixt_shard_set):
    """Megatron-LM's early stop exits 0; ours: 75 after SIGTERM or with --exit-duration-in-mins, else 0."""
    import signal

    from megatron.training import get_signal_handler
    from megatron.training.training import destroy_global_state

    from megatron_ixt.distributed import init_distributed

    flags = model_flags(ixt_shard_set.prefix + "_text_document", *sp_flags(ixt_shard_set))
    args = megatron_lm.parse_args(flags + ["--exit-interval", "2"])
    init_distributed()
    assert megatron_lm.stop_status(args) == 0
    destroy_global_state()
    assert megatron_lm.stop_status(megatron_lm.parse_args(flags + ["--exit-duration-in-mins", "5"])) == 75
    destroy_global_state()

    args = megatron_lm.parse_args(flags + ["--exit-signal-handler"])
    handler = get_signal_handler()
    try:
        assert megatron_lm.stop_status(args) == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert megatron_lm.stop_status(args) == 75
    finally:
        handler.release()
