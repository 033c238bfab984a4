"""The training loop over megatron-core's schedules, and why it stops (:class:`StopReason`).

One :class:`Trainer` per process (launched by ``torchrun``; a plain ``python`` launch is a
world of one). Its setup is a sequence of calls into the modules that own each piece: process
groups and seeding (:mod:`megatron_ixt.distributed`), model and DDP wrapping
(:mod:`megatron_ixt.model`), optimizer and scheduler (:mod:`megatron_ixt.training.optimizer`),
checkpoints (:mod:`megatron_ixt.training.checkpoint`), datasets (:mod:`megatron_ixt.training.data`).
Parallelism is megatron-core's: TP through its parallel layers, PP through
``get_forward_backward_func`` schedules, DP through its ``DistributedDataParallel`` (and the
distributed optimizer on GPU). Losses are per-token: each micro-batch returns its summed loss
and token count and megatron-core divides gradients by the global token count
(``calculate_per_token_loss``), so any DP/PP split of a global batch gives the same update.

Data order follows Megatron-LM's pretraining sampler: iteration ``i`` consumes global samples
``[i * gbs, (i + 1) * gbs)`` and data-parallel rank ``r`` takes micro-batches of
``micro_batch_size`` consecutive samples at offset ``r * micro_batch_size`` of each group of
``micro_batch_size * dp`` samples. Resuming at ``consumed_samples`` therefore continues on
exactly the next sample.
"""
from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_ixt.cli import EXIT_NONFINITE, EXIT_RESUMABLE
from megatron_ixt.distributed import init_distributed, set_seed
from megatron_ixt.evaluation import heldout
from megatron_ixt.mcore_private import NonFiniteGradNorm, raise_on_nonfinite_grad_norm
from megatron_ixt.model import padded_vocab_size, training_model, transformer_config
from megatron_ixt.tokenizer import build_tokenizer
from megatron_ixt.training import checkpoint as ckpt
from megatron_ixt.training.config import CheckpointConfig, Config, data_parallel_size
from megatron_ixt.training.data import build_datasets
from megatron_ixt.training.flops import mfu, peak_tflops, training_flops_per_iteration
from megatron_ixt.training.metrics import MetricsWriter, WandbSink
from megatron_ixt.training.optimizer import build_optimizer

# Loss statistics reported per micro-batch: (sum of per-token losses, token count).
LOSS_KEYS = ("loss", "doc", "prefix")


class StopReason(enum.Enum):
    """Why :meth:`Trainer.train` returned; :attr:`exit_code` is the process's exit status."""

    FINISHED = "finished"  # reached --train-iters
    EXIT_INTERVAL = "exit_interval"  # --exit-interval: a planned stop
    SIGNAL = "signal"  # SIGTERM with --exit-signal-handler (preemption, time limit)
    DURATION = "duration"  # --exit-duration-in-mins
    NONFINITE = "nonfinite"  # --check-for-nan-in-loss-and-grad: a NaN/Inf loss or gradient norm

    @property
    def exit_code(self) -> int:
        """0 for a finished run or a planned stop; 75 (resumable with ``--load``) after a signal or
        the duration limit; 65 after a non-finite loss or gradient norm (nothing saved after it)."""
        if self is StopReason.NONFINITE:
            return EXIT_NONFINITE
        return EXIT_RESUMABLE if self in (StopReason.SIGNAL, StopReason.DURATION) else 0

    def describe(self, c: CheckpointConfig) -> str:
        """The flag or event behind the stop, as printed at exit."""
        return {StopReason.FINISHED: "finished",
                StopReason.EXIT_INTERVAL: f"--exit-interval {c.exit_interval}",
                StopReason.SIGNAL: "received SIGTERM",
                StopReason.DURATION: f"--exit-duration-in-mins {c.exit_duration_in_mins}",
                StopReason.NONFINITE: "non-finite loss or gradient norm (--check-for-nan-in-loss-and-grad); "
                                      "no checkpoint saved after the last finite iteration"}[self]


class MicroBatches:
    """Iterator over this data-parallel rank's micro-batches (module docstring: the order)."""

    def __init__(self, dataset, first_sample: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, device: torch.device):
        self.dataset, self.next_sample = dataset, first_sample
        self.mbs, self.dp_rank, self.dp_size, self.device = micro_batch_size, dp_rank, dp_size, device

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        start = self.next_sample + self.dp_rank * self.mbs
        samples = [self.dataset[i] for i in range(start, start + self.mbs)]
        self.next_sample += self.mbs * self.dp_size
        batch = torch.utils.data.default_collate(samples)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def loss_func(loss_mask: torch.Tensor, prefix_mask: torch.Tensor | None, output: torch.Tensor):
    """Per-token loss for megatron-core's schedules: (loss sum, token count, report).

    The objective is the sum over ``loss_mask``; the report holds ``[sum, count]`` pairs for the
    objective, document tokens (``loss_mask * (1 - prefix_mask)``) and prefix tokens
    (``loss_mask * prefix_mask``).
    """
    losses = output.float()
    mask, kinds = heldout.token_kind_masks(loss_mask, prefix_mask)
    total = (losses * mask).sum()
    report = {}
    for key, m in (("loss", mask), *kinds.items()):
        report[key] = torch.stack([(losses * m).sum().detach(), m.sum()])
    return total, mask.sum().to(torch.int), report


def forward_step(data_iterator: Iterator, model, loss: Callable = loss_func):
    """megatron-core ``forward_step_func``: one micro-batch through this pipeline stage; ``loss``
    (:func:`loss_func`, or evaluation's ``eval_loss_func``) gets the batch's masks and the output."""
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                   labels=batch["labels"])
    return output, partial(loss, batch["loss_mask"], batch.get("prefix_mask"))


class Trainer:
    """Sets up from a :class:`Config` (process groups, model, optimizer, checkpoint, data) and
    runs :meth:`train`; see the module docstring."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        p, t = cfg.parallel, cfg.train
        init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.distributed_backend,
                         p.distributed_timeout_minutes)
        set_seed(t.seed)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        self.dp_size = data_parallel_size(cfg, self.world_size)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.num_microbatches = t.global_batch_size // (t.micro_batch_size * self.dp_size)

        self.tokenizer = build_tokenizer(cfg.tokenizer)
        self.vocab_size = padded_vocab_size(self.tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by,
                                            p.tensor_model_parallel_size)
        self.config = transformer_config(cfg)
        self.model = training_model(cfg, self.config, self.vocab_size)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.config, self.model)
        if t.check_for_nan_in_loss_and_grad:
            raise_on_nonfinite_grad_norm(self.optimizer)
        self.skipped_iters = 0  # non-finite iterations skipped in this launch (--skip-nonfinite-iters)
        self.forward_backward = get_forward_backward_func()

        self.iteration, self.consumed_samples = 0, 0
        if cfg.checkpoint.load:
            self.iteration, self.consumed_samples = ckpt.load_checkpoint(
                cfg.checkpoint.load, self.model, self.optimizer, self.scheduler,
                load_optim=not cfg.checkpoint.no_load_optim, load_rng=not cfg.checkpoint.no_load_rng,
                finetune=cfg.checkpoint.finetune)
            self._print(f"loaded {cfg.checkpoint.load} at iteration {self.iteration} "
                        f"({self.consumed_samples} consumed samples)")
        self.train_ds, self.valid_ds = build_datasets(cfg, self.tokenizer)

        self.flops_per_iteration = training_flops_per_iteration(cfg.model, self.vocab_size, t.global_batch_size)
        self.peak = cfg.logging.peak_tflops_per_device or (
            peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None)
        lg = cfg.logging
        self.writer = MetricsWriter(lg.metrics_file, lg.tensorboard_dir, wandb=WandbSink(
            lg.wandb_project, lg.wandb_exp_name, lg.wandb_save_dir) if lg.wandb_project else None) \
            if self.rank == 0 else None
        if self.writer:
            self.writer.header(cfg.to_dict(), self.world_size)
        self.signal_handler = ckpt.ExitSignalHandler() if cfg.checkpoint.exit_signal_handler else None
        self.async_saves = AsyncCallsQueue() if cfg.checkpoint.async_save else None
        self.start_time = time.time()

    def _stream(self, dataset, first_sample: int) -> MicroBatches:
        return MicroBatches(dataset, first_sample, self.cfg.train.micro_batch_size, self.dp_rank,
                            self.dp_size, self.device)

    # ------------------------------------------------------------------ steps
    def _run_schedule(self, data_iterator, forward_only: bool) -> list[dict]:
        m = self.cfg.model
        return self.forward_backward(
            forward_step_func=forward_step, data_iterator=data_iterator, model=[self.model],
            num_microbatches=self.num_microbatches, seq_length=m.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size, decoder_seq_length=m.seq_length,
            forward_only=forward_only)

    def _reduce_reports(self, reports: list[dict]) -> tuple:
        """(this rank's loss sum, totals): totals is [len(LOSS_KEYS), 2] (loss sum, token count),
        summed over micro-batches, DP and PP."""
        totals = torch.zeros(len(LOSS_KEYS), 2, dtype=torch.float64, device=self.device)
        for report in reports:
            totals += torch.stack([report[k].to(totals) for k in LOSS_KEYS])
        local_loss = totals[0, 0].clone()
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
        return local_loss, totals

    def train_step(self, data_iterator) -> dict:
        """One optimizer step over a global batch; returns the loss sums, the grad norm and
        ``nonfinite``: None, or (with --check-for-nan-in-loss-and-grad) a description of the NaN/Inf
        loss or gradient norm found, in which case nothing was updated.

        Both checks read values every rank already holds after the step's own reductions (the loss
        totals, the global gradient norm), so every rank decides alike with no extra collective."""
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self._run_schedule(data_iterator, forward_only=False)
        local_loss, totals = self._reduce_reports(reports)
        out = {"totals": totals, "grad_norm": None, "nonfinite": None}
        if self.cfg.train.check_for_nan_in_loss_and_grad and not math.isfinite(totals[0, 0].item()):
            out["nonfinite"] = self._nonfinite_ranks("loss", totals[0, 0].item(),
                                                     not math.isfinite(local_loss.item()))
            return out
        try:
            _, out["grad_norm"], _ = self.optimizer.step()[:3]
        except NonFiniteGradNorm as e:
            out["nonfinite"] = self._nonfinite_ranks("gradient norm", e.args[0], not all(
                bool(torch.isfinite(p.main_grad).all()) for p in self.model.parameters() if p.requires_grad))
            return out
        self.scheduler.step(increment=1)
        return out

    def _nonfinite_ranks(self, what: str, value: float, here: bool) -> str:
        """'non-finite loss (nan) on rank(s) 0, 1' (collective, only after a NaN/Inf): the ranks
        whose own loss, or own (data-parallel reduced) gradients, were non-finite."""
        flags = [None] * self.world_size
        dist.all_gather_object(flags, here)
        ranks = ", ".join(str(r) for r, bad in enumerate(flags) if bad) or "none alone"
        source = "own micro-batches" if what == "loss" else "gradients"
        return f"non-finite {what} ({value}); rank(s) with a non-finite value in their {source}: {ranks}"

    def evaluate(self) -> dict:
        """Mean document-token loss per conditioning over the first ``--eval-iters`` global batches
        (megatron_ixt/evaluation/heldout.py, the loop ``python -m megatron_ixt.evaluation.cli`` runs too)."""
        streams = {name: self._stream(dataset, 0) for name, dataset in self.valid_ds.items()}
        stats = heldout.evaluate(
            self.model, self.forward_backward, partial(forward_step, loss=heldout.eval_loss_func), streams,
            iters=self.cfg.eval.eval_iters, num_microbatches=self.num_microbatches,
            micro_batch_size=self.cfg.train.micro_batch_size, seq_length=self.cfg.model.seq_length,
            device=self.device)
        self.model.train()
        return heldout.summary(stats)

    # ------------------------------------------------------------------ loop
    def train(self) -> StopReason:
        """Train to ``--train-iters`` or an earlier stop (saving a checkpoint with ``--save``)."""
        cfg, t = self.cfg, self.cfg.train
        tokens_per_iteration = t.global_batch_size * cfg.model.seq_length
        stream = self._stream(self.train_ds, self.consumed_samples)
        window = torch.zeros(len(LOSS_KEYS), 2, dtype=torch.float64, device=self.device)
        window_iters, window_time = 0, 0.0  # train-step wall time only (no eval/checkpoint time)
        window_skipped = 0
        last_saved = self.iteration if cfg.checkpoint.load else None
        reason = StopReason.FINISHED
        while self.iteration < t.train_iters:
            if self.async_saves is not None and self.async_saves.get_num_unfinalized_calls():
                self.async_saves.maybe_finalize_async_calls(blocking=False)  # collective: moves the tracker
            start = time.time()
            out = self.train_step(stream)
            window_time += time.time() - start
            self.iteration += 1
            self.consumed_samples += t.global_batch_size
            window_iters += 1
            if out["nonfinite"] is not None:
                self.skipped_iters += 1
                if self.skipped_iters > t.skip_nonfinite_iters:
                    reason = StopReason.NONFINITE
                    self._print(f"iteration {self.iteration}: {out['nonfinite']}; stopping (exit "
                                f"{reason.exit_code}), --skip-nonfinite-iters {t.skip_nonfinite_iters} "
                                f"used up")
                    break
                window_skipped += 1
                self._print(f"iteration {self.iteration}: {out['nonfinite']}; skipped, no update "
                            f"({self.skipped_iters} of --skip-nonfinite-iters {t.skip_nonfinite_iters})")
            else:
                window += out["totals"]
            if self.iteration % cfg.logging.log_interval == 0 or self.iteration == t.train_iters:
                tflops = self.flops_per_iteration * window_iters / window_time / self.world_size / 1e12
                self._log("train", {
                    "consumed_samples": self.consumed_samples,
                    "consumed_tokens": self.consumed_samples * cfg.model.seq_length,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "loss": _mean(window[0]), "doc_loss": _mean(window[1]),
                    "prefix_loss": _mean(window[2]),
                    "grad_norm": float(out["grad_norm"]) if out["grad_norm"] is not None else None,
                    "tokens_per_s": tokens_per_iteration * window_iters / window_time,
                    "tflops_per_device": tflops, "mfu": mfu(tflops, self.peak),
                    "cumulative_flops": self.flops_per_iteration * self.iteration,
                    "skipped_iters": window_skipped,
                })
                window.zero_()
                window_iters, window_time, window_skipped = 0, 0.0, 0
            if self.valid_ds and cfg.eval.eval_iters and self.iteration % cfg.eval.eval_interval == 0:
                self._log("eval", {"consumed_tokens": self.consumed_samples * cfg.model.seq_length,
                                   "cumulative_flops": self.flops_per_iteration * self.iteration,
                                   **self.evaluate()})
            if cfg.checkpoint.save and cfg.checkpoint.save_interval and \
                    self.iteration % cfg.checkpoint.save_interval == 0:
                self.save()
                last_saved = self.iteration
            stop = self._stop_reason()
            if stop is not None:
                reason = stop
                self._print(f"exiting at iteration {self.iteration}: {reason.describe(cfg.checkpoint)}")
                break
        if cfg.checkpoint.save and last_saved != self.iteration and reason is not StopReason.NONFINITE:
            self.save()
        if self.async_saves is not None:
            self.async_saves.close()  # waits for the last save, which moves the tracker
        if self.writer:
            self.writer.close()
        return reason

    def save(self) -> None:
        """Save this iteration (``saved checkpoint PATH`` is printed once the tracker moved); with
        --async-save, after waiting for the previous save, and in the background."""
        c = self.cfg.checkpoint
        if self.async_saves is not None:
            self.async_saves.maybe_finalize_async_calls(blocking=True)
        path = ckpt.save_checkpoint(c.save, self.iteration, self.model, self.optimizer, self.scheduler,
                                    self.consumed_samples, self.cfg.to_dict(), keep_last=c.ckpt_keep_last,
                                    async_queue=self.async_saves)
        if self.async_saves is not None:
            self._print(f"saving checkpoint {path} in the background")

    def _stop_reason(self) -> StopReason | None:
        """Why to stop after this iteration (None: go on); collective when it reads a signal or the clock."""
        c = self.cfg.checkpoint
        if c.exit_interval and self.iteration % c.exit_interval == 0:
            return StopReason.EXIT_INTERVAL
        if self.signal_handler is not None and self.signal_handler.received():
            return StopReason.SIGNAL
        if c.exit_duration_in_mins is not None:
            over = torch.tensor([int(time.time() - self.start_time > 60 * c.exit_duration_in_mins)],
                                device=self.device)
            dist.all_reduce(over, op=dist.ReduceOp.MAX)
            if over.item():
                return StopReason.DURATION
        return None

    def _log(self, kind: str, record: dict) -> None:
        if self.writer:
            self.writer.log(kind, {"iteration": self.iteration, **record})

    def _print(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, flush=True)  # noqa: T201 - the run log lines tests and docs/slurm.md grep


def _mean(pair: torch.Tensor) -> float | None:
    total, count = pair.tolist()
    return total / count if count > 0 else None
