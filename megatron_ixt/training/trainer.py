"""The training loop: megatron-core model, schedules, DDP, optimizer and scheduler, glued.

One :class:`Trainer` per process (launched by ``torchrun``; a plain ``python`` launch is a
world of one). Parallelism is megatron-core's: TP through its parallel layers, PP through
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

import time
from functools import partial
from typing import Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from megatron_ixt.data.provider import build_datasets
from megatron_ixt.distributed import init_distributed, set_seed
from megatron_ixt.model import model_from_config, padded_vocab_size, transformer_config
from megatron_ixt.tokenizer import build_tokenizer
from megatron_ixt.training import checkpoint as ckpt
from megatron_ixt.training.config import Config, data_parallel_size
from megatron_ixt.training.flops import mfu, peak_tflops, training_flops_per_iteration
from megatron_ixt.training.metrics import MetricsWriter

# Loss statistics reported per micro-batch: (sum of per-token losses, token count).
LOSS_KEYS = ("loss", "doc", "prefix")


def scheduler_for(cfg: Config, optimizer) -> OptimizerParamScheduler:
    """Megatron's scheduler, stepped once per iteration (``--train-iters 0``: any valid decay)."""
    o, iters = cfg.optim, max(cfg.train.train_iters, 1)
    kwargs = dict(
        optimizer=optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_iters,
        lr_decay_steps=max(o.lr_decay_iters or iters, o.lr_warmup_iters + 1),
        lr_decay_style=o.lr_decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=iters, wd_incr_style="constant")
    if o.lr_decay_style == "WSD":
        kwargs.update(wsd_decay_steps=o.lr_wsd_decay_iters, lr_wsd_decay_style=o.lr_wsd_decay_style)
    return OptimizerParamScheduler(**kwargs)


class MicroBatches:
    """Iterator over this data-parallel rank's micro-batches (module docstring: the order)."""

    def __init__(self, dataset, first_sample: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, device: torch.device):
        self.dataset, self.next_sample = dataset, first_sample
        self.mbs, self.dp_rank, self.dp_size, self.device = micro_batch_size, dp_rank, dp_size, device

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        start = self.next_sample + self.dp_rank * self.mbs
        samples = [self.dataset[i] for i in range(start, start + self.mbs)]
        self.next_sample += self.mbs * self.dp_size
        batch = torch.utils.data.default_collate(samples)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def loss_func(loss_mask: torch.Tensor, prefix_mask: Optional[torch.Tensor], output: torch.Tensor):
    """Per-token loss for megatron-core's schedules: (loss sum, token count, report).

    The objective is the sum over ``loss_mask``; the report holds ``[sum, count]`` pairs for the
    objective, document tokens (``loss_mask * (1 - prefix_mask)``) and prefix tokens
    (``loss_mask * prefix_mask``).
    """
    losses = output.float()
    mask = loss_mask.float()
    prefix = torch.zeros_like(mask) if prefix_mask is None else prefix_mask.float()
    total = (losses * mask).sum()
    report = {}
    for key, m in (("loss", mask), ("doc", mask * (1.0 - prefix)), ("prefix", mask * prefix)):
        report[key] = torch.stack([(losses * m).sum().detach(), m.sum()])
    return total, mask.sum().to(torch.int), report


def forward_step(data_iterator: Iterator, model):
    """megatron-core ``forward_step_func``: one micro-batch through this pipeline stage."""
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                   labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"], batch.get("prefix_mask"))


class Trainer:
    """Builds everything from a :class:`Config` and runs ``train()``; see the module docstring."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        p = cfg.parallel
        init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                         p.distributed_backend)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        self.dp_size = data_parallel_size(cfg, self.world_size)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.num_microbatches = cfg.train.global_batch_size // (cfg.train.micro_batch_size * self.dp_size)
        set_seed(cfg.train.seed)

        self.tokenizer = build_tokenizer(cfg.tokenizer)
        self.vocab_size = padded_vocab_size(self.tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by,
                                            cfg.parallel.tensor_model_parallel_size)
        self.config = transformer_config(cfg)
        self.model = self._build_model()
        self.optimizer = get_megatron_optimizer(self._optimizer_config(), [self.model])
        self.scheduler = scheduler_for(cfg, self.optimizer)
        self.config.no_sync_func = self.model.no_sync
        self.config.finalize_model_grads_func = finalize_model_grads
        self.config.grad_scale_func = self.optimizer.scale_loss
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

        self.flops_per_iteration = training_flops_per_iteration(cfg.model, self.vocab_size,
                                                                cfg.train.global_batch_size)
        self.peak = cfg.logging.peak_tflops_per_device or (
            peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None)
        self.writer = MetricsWriter(cfg.logging.metrics_file, cfg.logging.tensorboard_dir) \
            if self.rank == 0 else None
        if self.writer:
            self.writer.header(cfg.to_dict(), self.world_size)
        self.signal_handler = ckpt.ExitSignalHandler() if cfg.checkpoint.exit_signal_handler else None
        self.start_time = time.time()

    # ------------------------------------------------------------------ building
    def _build_model(self):
        model = model_from_config(self.cfg, self.config, self.vocab_size)
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        if self.cfg.train.bf16:
            model = Float16Module(self.config, model)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=self.cfg.parallel.overlap_grad_reduce,
            use_distributed_optimizer=self.cfg.parallel.use_distributed_optimizer)
        model = DistributedDataParallel(config=self.config, ddp_config=ddp_config, module=model)
        model.broadcast_params()
        return model

    def _optimizer_config(self) -> OptimizerConfig:
        o = self.cfg.optim
        return OptimizerConfig(
            optimizer=o.optimizer, lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
            clip_grad=o.clip_grad, bf16=self.cfg.train.bf16, params_dtype=self.config.params_dtype,
            use_distributed_optimizer=self.cfg.parallel.use_distributed_optimizer)

    def _stream(self, dataset, first_sample: int) -> MicroBatches:
        return MicroBatches(dataset, first_sample, self.cfg.train.micro_batch_size, self.dp_rank,
                            self.dp_size, self.device)

    # ------------------------------------------------------------------ steps
    def _run_schedule(self, data_iterator, forward_only: bool) -> List[dict]:
        m = self.cfg.model
        return self.forward_backward(
            forward_step_func=forward_step, data_iterator=data_iterator, model=[self.model],
            num_microbatches=self.num_microbatches, seq_length=m.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size, decoder_seq_length=m.seq_length,
            forward_only=forward_only)

    def _reduce_reports(self, reports: List[dict]) -> torch.Tensor:
        """[len(LOSS_KEYS), 2] (loss sum, token count), summed over micro-batches, DP and PP."""
        totals = torch.zeros(len(LOSS_KEYS), 2, dtype=torch.float64, device=self.device)
        for report in reports:
            totals += torch.stack([report[k].to(totals) for k in LOSS_KEYS])
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
        return totals

    def train_step(self, data_iterator) -> dict:
        """One optimizer step over a global batch; returns loss sums and the grad norm."""
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self._run_schedule(data_iterator, forward_only=False)
        _, grad_norm, _ = self.optimizer.step()[:3]
        self.scheduler.step(increment=1)
        return {"totals": self._reduce_reports(reports), "grad_norm": grad_norm}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean document-token loss per conditioning over the first ``--eval-iters`` global batches."""
        self.model.eval()
        result = {}
        for name, dataset in self.valid_ds.items():
            stream = self._stream(dataset, 0)
            totals = torch.zeros(len(LOSS_KEYS), 2, dtype=torch.float64, device=self.device)
            for _ in range(self.cfg.eval.eval_iters):
                totals += self._reduce_reports(self._run_schedule(stream, forward_only=True))
            result[f"{name}/doc_loss"] = _mean(totals[1])
            if name == "prefix" and totals[2, 1] > 0:
                result["prefix/prefix_loss"] = _mean(totals[2])
        self.model.train()
        return result

    # ------------------------------------------------------------------ loop
    def train(self) -> Optional[str]:
        """Train to ``--train-iters``; returns why it stopped early (None when it finished)."""
        cfg, t = self.cfg, self.cfg.train
        tokens_per_iteration = t.global_batch_size * cfg.model.seq_length
        stream = self._stream(self.train_ds, self.consumed_samples)
        window = torch.zeros(len(LOSS_KEYS), 2, dtype=torch.float64, device=self.device)
        window_iters, window_time = 0, 0.0  # train-step wall time only (no eval/checkpoint time)
        last_saved = self.iteration if cfg.checkpoint.load else None
        reason = None
        while self.iteration < t.train_iters:
            start = time.time()
            out = self.train_step(stream)
            window_time += time.time() - start
            self.iteration += 1
            self.consumed_samples += t.global_batch_size
            window += out["totals"]
            window_iters += 1
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
                })
                window.zero_()
                window_iters, window_time = 0, 0.0
            if self.valid_ds and cfg.eval.eval_iters and self.iteration % cfg.eval.eval_interval == 0:
                self._log("eval", {"consumed_tokens": self.consumed_samples * cfg.model.seq_length,
                                   "cumulative_flops": self.flops_per_iteration * self.iteration,
                                   **self.evaluate()})
            if cfg.checkpoint.save and cfg.checkpoint.save_interval and \
                    self.iteration % cfg.checkpoint.save_interval == 0:
                self.save()
                last_saved = self.iteration
            reason = self._exit_reason()
            if reason:
                self._print(f"exiting at iteration {self.iteration}: {reason}")
                break
        if cfg.checkpoint.save and last_saved != self.iteration:
            self.save()
        if self.writer:
            self.writer.close()
        return reason

    def save(self) -> None:
        path = ckpt.save_checkpoint(self.cfg.checkpoint.save, self.iteration, self.model, self.optimizer,
                                    self.scheduler, self.consumed_samples, self.cfg.to_dict())
        self._print(f"saved checkpoint {path}")

    def _exit_reason(self) -> Optional[str]:
        c = self.cfg.checkpoint
        if c.exit_interval and self.iteration % c.exit_interval == 0:
            return f"--exit-interval {c.exit_interval}"
        if self.signal_handler is not None and self.signal_handler.received():
            return "received SIGTERM"
        if c.exit_duration_in_mins is not None:
            over = torch.tensor([int(time.time() - self.start_time > 60 * c.exit_duration_in_mins)],
                                device=self.device)
            dist.all_reduce(over, op=dist.ReduceOp.MAX)
            if over.item():
                return f"--exit-duration-in-mins {c.exit_duration_in_mins}"
        return None

    def _log(self, kind: str, record: dict) -> None:
        if self.writer:
            self.writer.log(kind, {"iteration": self.iteration, **record})

    def _print(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, flush=True)


def _mean(pair: torch.Tensor) -> Optional[float]:
    total, count = pair.tolist()
    return total / count if count > 0 else None
