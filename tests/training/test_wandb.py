"""W&B (--wandb-project, offline mode): the metrics JSONL's records reach the run; a W&B failure
does not stop training."""
import glob
import json
import os
import struct

import pytest

from tests.helpers.training import read_records, run_pretrain, tiny_model_args

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")


def read_wandb_records(path: str) -> list:
    """The protobuf records of a run's ``run-ID.wandb`` file: a 7-byte file header, then LevelDB-log
    framing (32 KiB blocks; each chunk has a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:7]
    records, chunks, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_run_holds_every_metrics_record(synth_data, tmp_path, monkeypatch):
    save, wandb_dir = str(tmp_path / "ckpt"), str(tmp_path / "wandb")
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--save", save,
        "--wandb-project", "ixt-test", "--wandb-exp-name", "tiny", "--wandb-save-dir", wandb_dir]
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_pretrain(args)
    [path] = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb"))
    records = read_wandb_records(path)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "ixt-test" and run.display_name == "tiny"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["world_size"] == 1 and config["train"]["train_iters"] == 4
    steps = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            steps.setdefault(r.history.step.num, {}).update(row)
    metrics = os.path.join(save, "metrics.jsonl")
    logged = read_records(metrics, "train") + read_records(metrics, "eval")
    assert len(logged) == 6 and {"none/doc_loss", "prefix/doc_loss", "steering/doc_loss"} <= set(logged[-1])
    for record in logged:
        for key, value in record.items():
            if key not in ("kind", "iteration", "time") and value is not None:
                assert steps[record["iteration"]][f"{record['kind']}/{key}"] == pytest.approx(value), key


def test_wandb_failure_does_not_stop_training(synth_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "not-a-mode")  # wandb.init raises (a settings ValidationError)
    save = str(tmp_path / "ckpt")
    proc = run_pretrain(tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "3", "--eval-iters", "0", "--save", save, "--wandb-project", "ixt-test"])
    assert "warning: W&B logging disabled (" in proc.stderr and "not-a-mode" in proc.stderr
    assert [r["iteration"] for r in read_records(os.path.join(save, "metrics.jsonl"), "train")] == [1, 2, 3]
