"""Flags -> dataclass config with Megatron-LM names; bad combinations fail with what to change."""
import pytest

from megatron_ixt.pretrain import main
from megatron_ixt.training.config import ConfigError, check_data_paths, parse_args

BASE = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--data-path", "/data/a_text_document",
        "--num-layers", "4", "--hidden-size", "96", "--num-attention-heads", "6", "--seq-length", "64",
        "--train-iters", "10"]


def test_megatron_flags_fill_the_dataclasses():
    cfg = parse_args(BASE + ["--num-query-groups", "2", "--micro-batch-size", "2", "--lr", "1e-3",
                             "--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "3", "--clip-grad", "0.5",
                             "--tensor-model-parallel-size", "2", "--data-path", "0.3", "/d/a", "0.7", "/d/b",
                             "--ixt-prefix-kind", "quality", "--ixt-prefix-loss", "mask",
                             "--ixt-annotated-fraction", "0.15", "--no-swiglu", "--save", "/ckpt"],
                     world_size=4)
    assert cfg.model.num_query_groups == 2 and cfg.model.kv_channels == 16
    assert cfg.model.swiglu is False and cfg.model.ffn_hidden_size == 4 * 96
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.parallel.distributed_backend == "gloo"
    assert cfg.train.global_batch_size == 2 * 2  # micro batch x data-parallel size (4 / TP 2)
    assert cfg.optim.lr_decay_style == "WSD" and cfg.optim.lr_decay_iters == 10
    assert cfg.data.data_path == ["0.3", "/d/a", "0.7", "/d/b"]
    assert (cfg.data.ixt_prefix_kind, cfg.data.ixt_prefix_loss, cfg.data.ixt_annotated_fraction) == \
        ("quality", "mask", 0.15)
    assert cfg.logging.metrics_file == "/ckpt/metrics.jsonl"
    assert cfg.tokenizer.tokenizer_type == "NullTokenizer" and cfg.tokenizer.vocab_size == 100


def test_llama_defaults_and_train_tokens():
    args = [a for a in BASE if a not in ("--train-iters", "10")]
    cfg = parse_args(args + ["--train-tokens", "1000", "--global-batch-size", "4"])
    assert cfg.train.train_iters == 4  # ceil(1000 / (4 * 64))
    m = cfg.model
    assert (m.normalization, m.swiglu, m.position_embedding_type, m.untie_embeddings_and_output_weights) == \
        ("RMSNorm", True, "rope", True)
    assert m.ffn_hidden_size == 256  # 8/3 * 96 rounded up to a multiple of 64


@pytest.mark.parametrize("extra,world,message", [
    (["--tensor-model-parallel-size", "4"], 4,
     "--num-attention-heads 6 must be divisible by --tensor-model-parallel-size 4"),
    (["--pipeline-model-parallel-size", "3"], 3,
     "--num-layers 4 must be divisible by --pipeline-model-parallel-size 3"),
    (["--tensor-model-parallel-size", "2"], 3, "world size 3 is not divisible"),
    (["--num-query-groups", "4"], 1, "must be a multiple of --num-query-groups 4"),
    (["--global-batch-size", "6", "--micro-batch-size", "4"], 1, "--global-batch-size 6 must be a multiple"),
    (["--train-tokens", "100"], 1, "only one of --train-iters and --train-tokens"),
    (["--use-distributed-optimizer"], 1, "--use-distributed-optimizer needs CUDA"),
    (["--transformer-impl", "transformer_engine"], 1, "needs CUDA"),
    (["--lr-decay-style", "WSD"], 1, "--lr-wsd-decay-iters"),
    (["--lr-warmup-iters", "10"], 1, "--lr-warmup-iters 10 must be < --lr-decay-iters 10"),
    (["--min-lr", "1", "--lr", "0.1"], 1, "--min-lr 1.0 must be <= --lr 0.1"),
    (["--exit-signal-handler"], 1, "--exit-signal-handler saves a checkpoint on SIGTERM: give --save"),
    (["--finetune"], 1, "--finetune needs --load"),
    (["--train-data-path", "/x"], 1, "not both"),
    (["--ixt-prefix-dropout", "1.5"], 1, "--ixt-prefix-dropout must be in [0, 1]"),
    (["--sequence-parallel", "--tensor-model-parallel-size", "2"], 2, "--sequence-parallel needs --transformer-impl"),
])
def test_bad_combinations_name_the_flag(extra, world, message):
    with pytest.raises(ConfigError) as err:
        parse_args(BASE + extra, world_size=world, cuda=False)
    assert message in str(err.value)


def test_cli_reports_all_problems_and_exits_2(capsys):
    assert main(BASE + ["--finetune", "--exit-signal-handler"]) == 2
    err = capsys.readouterr().err
    assert "--finetune needs --load" in err and "--exit-signal-handler" in err


def test_data_paths_must_exist(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"")
    (tmp_path / "a.idx").write_bytes(b"")
    (tmp_path / "b.bin").write_bytes(b"")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    check_data_paths(parse_args(BASE + ["--data-path", "1", a, "2", a]))
    with pytest.raises(ConfigError) as err:
        check_data_paths(parse_args(BASE + ["--data-path", "0.5", a, "0.5", b]))
    assert f"--data-path: {b}.idx not found" in str(err.value)
    with pytest.raises(ConfigError, match="0.5.bin/.idx not found"):  # a weight without its path
        check_data_paths(parse_args(BASE + ["--data-path", "0.5", a, "0.5"]))


def test_long_run_flags_defaults_and_validation():
    cfg = parse_args(BASE)
    assert cfg.train.check_for_nan_in_loss_and_grad is True and cfg.train.skip_nonfinite_iters == 0
    assert cfg.parallel.distributed_timeout_minutes == 10
    assert (cfg.checkpoint.async_save, cfg.checkpoint.ckpt_keep_last, cfg.logging.wandb_project) == (False, 0, None)
    cfg = parse_args(BASE + ["--no-check-for-nan-in-loss-and-grad", "--save", "/ckpt", "--async-save",
                             "--ckpt-keep-last", "3", "--wandb-project", "p", "--distributed-timeout-minutes", "2"])
    assert cfg.train.check_for_nan_in_loss_and_grad is False and cfg.checkpoint.ckpt_keep_last == 3
    assert cfg.logging.wandb_save_dir == "/ckpt/wandb" and cfg.parallel.distributed_timeout_minutes == 2
    with pytest.raises(ConfigError, match="--skip-nonfinite-iters needs the NaN/Inf check") as e:
        parse_args(BASE + ["--no-check-for-nan-in-loss-and-grad", "--skip-nonfinite-iters", "2",
                           "--ckpt-keep-last", "-1"])
    assert "--ckpt-keep-last must be >= 0" in str(e.value)
