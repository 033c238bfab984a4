"""In-process ``sglang.Engine`` backend (GPU; optional extra ``megatron-ixt[sglang]``).

Requests are gathered into batches of up to ``batch_size`` prompts (or whatever arrived
within ``batch_wait`` seconds) and sent as one ``await engine.async_generate(prompt=[...],
sampling_params={...})`` call, which returns one ``{"text", "output_ids", "meta_info"}`` dict
per prompt (same ``meta_info`` as the HTTP ``/generate`` API). SGLang fails a whole batch when
one item is bad (e.g. a prompt longer than the context: ``ValueError``); the batch is then
split in halves and retried until the bad item stands alone and fails with
``failed:engine``, so one bad document cannot fail its neighbours.

``sglang`` is imported only when this backend is constructed. Not exercised against a real
engine in this repository's CPU test suite (see docs/annotate.md).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field

from annotate.backends.base import BackendError, Completion, JudgeContext, Request, Sampling

log = logging.getLogger("annotate")


@dataclass
class EngineConfig:
    model_path: str
    engine_args: dict = field(default_factory=dict)  # extra sglang.Engine(**kwargs), e.g. tp_size
    sampling: Sampling = field(default_factory=Sampling)
    batch_size: int = 256
    batch_wait: float = 0.05


def _key_value(text: str) -> tuple:
    """``KEY=VALUE`` -> ``(KEY, VALUE parsed as JSON, else the string)``."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def make_engine(config: EngineConfig):
    try:
        import sglang
    except ImportError as e:
        raise RuntimeError("--backend sglang needs the sglang package on a GPU machine "
                           "(pip install 'megatron-ixt[sglang]'); or start `python -m sglang.launch_server` "
                           "and use --backend http") from e
    return sglang.Engine(model_path=config.model_path, **config.engine_args)


class EngineBackend:
    """:class:`annotate.backends.base.BackendFactory` and ``Backend`` over an in-process ``sglang.Engine``."""

    name = "sglang"
    description = "in-process sglang.Engine on this node's GPUs (pip install 'megatron-ixt[sglang]')"
    result_flags = ("model_path",)
    operational_flags = ("tp_size", "dp_size", "engine_arg", "engine_batch_size")

    @staticmethod
    def add_args(group) -> None:
        group.add_argument("--model-path", default=None,
                           help="the judge model for sglang.Engine: Hugging Face name or local checkpoint directory")
        group.add_argument("--tp-size", type=int, default=1, help="tensor-parallel GPUs per engine replica")
        group.add_argument("--dp-size", type=int, default=1, help="data-parallel engine replicas")
        group.add_argument("--engine-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                           help="extra sglang.Engine keyword, VALUE parsed as JSON if it can be (repeatable), "
                                "e.g. --engine-arg mem_fraction_static=0.85")
        group.add_argument("--engine-batch-size", type=int, default=EngineConfig.batch_size,
                           help="most prompts per engine.async_generate call")

    @classmethod
    def from_args(cls, args, judge: JudgeContext) -> EngineBackend:
        if not args.model_path:
            raise ValueError("--backend sglang needs --model-path")
        engine_args = {"tp_size": args.tp_size, "dp_size": args.dp_size, **dict(args.engine_arg)}
        config = EngineConfig(model_path=args.model_path, engine_args=engine_args, sampling=judge.sampling,
                              batch_size=args.engine_batch_size)
        return cls(config, judge.format)

    def __init__(self, config: EngineConfig, formatter, engine=None):
        self.cfg = config
        self.model = config.model_path
        self.format = formatter
        self.engine = engine if engine is not None else make_engine(config)
        self._sampling = asdict(config.sampling)
        self.errors: dict[str, int] = {}  # exception type of failed engine calls -> count
        self._pending: list = []
        self._timer = None
        self._batches: set = set()

    def info(self) -> dict:
        return {"backend": self.name, "model": self.model}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        for task in list(self._batches):
            task.cancel()
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()

    async def complete(self, request: Request) -> Completion:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((self.format(request.prompt), future))
        if len(self._pending) >= self.cfg.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.cfg.batch_wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._generate(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _generate(self, batch: list) -> None:
        try:
            outputs = await self.engine.async_generate(prompt=[p for p, _ in batch], sampling_params=self._sampling)
            if len(outputs) != len(batch):
                raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(batch)} prompts")
        except Exception as e:  # noqa: BLE001 - any engine error: isolate the bad item
            self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
            if len(batch) == 1:
                _, future = batch[0]
                if not future.done():
                    future.set_exception(BackendError(f"sglang.Engine: {type(e).__name__}: {e}", "engine"))
                return
            mid = len(batch) // 2
            log.warning("engine batch of %d failed (%s); retrying in halves", len(batch), e)
            await asyncio.gather(self._generate(batch[:mid]), self._generate(batch[mid:]))
            return
        for (_, future), out in zip(batch, outputs):
            if future.done():
                continue
            try:
                meta = out["meta_info"]
                reason = meta.get("finish_reason")
                kind = reason.get("type", "unknown") if isinstance(reason, dict) else str(reason)
                future.set_result(Completion(text=out["text"], reasoning=None, finish_reason=kind,
                                             prompt_tokens=int(meta.get("prompt_tokens") or 0),
                                             completion_tokens=int(meta.get("completion_tokens") or 0),
                                             cached_tokens=int(meta.get("cached_tokens") or 0)))
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                future.set_exception(BackendError(f"sglang.Engine: malformed output {out!r:.200}: {e}", "engine"))
