"""Metric sinks: stdout, a metrics JSONL file, TensorBoard, W&B. Only the writing rank creates one.

Metrics JSONL (format ``megatron-ixt-metrics``, version 1), one JSON object per line,
appended (a resumed run continues the same file):

* ``{"kind": "header", "format": "megatron-ixt-metrics", "version": 1, "time": unix_s,
  "world_size": int, "config": {...}}`` once per launch;
* ``{"kind": "train", "iteration": int, "consumed_samples": int, "consumed_tokens": int,
  "lr": float, "loss": float, "doc_loss": float, "prefix_loss": float|null,
  "grad_norm": float, "tokens_per_s": float, "tflops_per_device": float, "mfu": float|null,
  "cumulative_flops": float, "skipped_iters": int, "time": unix_s}`` every ``--log-interval``
  iterations (``skipped_iters``: non-finite iterations of the window skipped by
  ``--skip-nonfinite-iters``; their loss is not in the window's means);
* ``{"kind": "eval", "iteration": int, "consumed_tokens": int, "cumulative_flops": float,
  "<conditioning>/doc_loss": float, ...}`` every ``--eval-interval`` iterations, one key per
  conditioning of ``megatron_ixt.data.provider.conditioning_configs``: ``prefix/doc_loss`` (each
  document under its own prefix), ``none/doc_loss`` (no prefix), ``steering/doc_loss`` (every
  document under the shard set's steering prefix; only when ``P_ixt.json`` has one), plus
  ``prefix/prefix_loss`` (loss on the prefix tokens themselves); the baseline arm
  (``--ixt-prefix-kind none``) logs only ``none/doc_loss``.

W&B (``--wandb-project``; the optional ``wandb`` package) gets the same records: the header's
config and world size as the run config, every train and eval record as ``<kind>/<key>`` at step
``iteration``. A W&B error (import, login, network) prints one warning and turns the W&B sink off;
training and the other sinks go on.

Losses are mean nats per token. ``loss`` is the optimised objective (mean over the loss mask);
``doc_loss`` is over document tokens only, ``prefix_loss`` over feedback-prefix tokens.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

METRICS_FORMAT = "megatron-ixt-metrics"
METRICS_VERSION = 1


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class WandbSink:
    """One W&B run (``wandb.init(project, name, dir)``) fed the metric records; any W&B exception
    prints a warning and disables the sink (it never stops training)."""

    def __init__(self, project: str, name: str | None, save_dir: str):
        self.project, self.name, self.save_dir = project, name, save_dir
        self._run = None

    def header(self, record: dict) -> None:
        def start():
            import wandb

            os.makedirs(self.save_dir, exist_ok=True)
            self._run = wandb.init(project=self.project, name=self.name, dir=self.save_dir,
                                   config={"world_size": record["world_size"], **record["config"]})
        self._guard(start)

    def log(self, record: dict) -> None:
        if self._run is not None:
            values = {f"{record['kind']}/{k}": v for k, v in record.items()
                      if k not in ("kind", "iteration", "time") and v is not None}
            self._guard(lambda: self._run.log(values, step=record["iteration"]))

    def close(self) -> None:
        if self._run is not None:
            self._guard(self._run.finish)

    def _guard(self, call) -> None:
        try:
            call()
        except Exception as e:  # noqa: BLE001 - whatever W&B raises, training goes on
            # stderr line documented in docs/training.md and asserted by tests/training/test_wandb.py
            print(f"warning: W&B logging disabled ({type(e).__name__}: {e}); the metrics JSONL and "  # noqa: T201
                  f"TensorBoard go on", file=sys.stderr, flush=True)
            self._run = None


class MetricsWriter:
    """Writes metric records to stdout, a JSONL file and (optionally) TensorBoard and W&B."""

    def __init__(self, jsonl_path: str | None, tensorboard_dir: str | None = None,
                 stdout: bool = True, wandb: WandbSink | None = None):
        self.stdout = stdout
        self._file = None
        self._tb = None
        self._wandb = wandb
        if jsonl_path:
            os.makedirs(os.path.dirname(os.path.abspath(jsonl_path)), exist_ok=True)
            self._file = open(jsonl_path, "a", encoding="utf-8")
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=tensorboard_dir)

    def header(self, config: dict, world_size: int) -> None:
        record = {"kind": "header", "format": METRICS_FORMAT, "version": METRICS_VERSION,
                  "time": time.time(), "world_size": world_size, "config": config}
        self._write(record)
        if self._wandb is not None:
            self._wandb.header(record)

    def log(self, kind: str, record: dict) -> None:
        """``kind`` is 'train' or 'eval'; ``record`` must hold 'iteration'."""
        record = {"kind": kind, **{k: _clean(v) for k, v in record.items()}, "time": time.time()}
        self._write(record)
        if self.stdout:
            print(_format_line(record), flush=True)  # noqa: T201 - the per-iteration log line on stdout
        if self._tb is not None:
            step = record["iteration"]
            for key, value in record.items():
                if key not in ("kind", "iteration", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(record)

    def _write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.close()


def _format_line(record: dict) -> str:
    parts = [f"[{record['kind']}] iter {record['iteration']}"]
    for key, value in record.items():
        if key in ("kind", "iteration", "time") or value is None:
            continue
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}" if abs(value) < 1e5 else f"{key} {value:.3e}")
        else:
            parts.append(f"{key} {value}")
    return " | ".join(parts)


def read_metrics(path: str) -> list:
    """All records of a metrics JSONL; refuses unknown format versions."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
            if record.get("kind") == "header" and record.get("version") != METRICS_VERSION:
                raise ValueError(f"{path}:{lineno}: metrics version {record.get('version')} "
                                 f"unknown (this reader knows {METRICS_VERSION})")
            records.append(record)
    return records
