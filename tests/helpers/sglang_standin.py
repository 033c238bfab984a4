"""A local stand-in for an SGLang server: SGLang's HTTP protocol, a fake judge, injectable faults.

Endpoints (shapes as in sglang 0.5.x ``http_server.py`` / ``io_struct.py`` / ``openai/protocol.py``):

- ``GET /health``: 200, or 503 while "starting" (``startup_delay``).
- ``GET /model_info``: ``{"model_path", "served_model_name", "is_generation", ...}``.
- ``GET /v1/models``: OpenAI model list.
- ``POST /generate``: ``{"text": str | [str], "sampling_params": {...}}`` ->
  ``{"text", "output_ids", "meta_info": {"id", "finish_reason": {"type": "stop", "matched": ...} |
  {"type": "length", "length": N}, "prompt_tokens", "completion_tokens", "cached_tokens", ...}}``
  (a list for a batch).
- ``POST /v1/chat/completions``: OpenAI chat completion; with ``reasoning_parser`` the
  ``<think>`` part is returned in ``message.reasoning_content`` (like ``--reasoning-parser``);
  ``usage.prompt_tokens_details.cached_tokens`` like ``--enable-cache-report``.

The "model" answers deterministically per document (:func:`verdict_for`): a thinking block
that contains a *draft* verdict, then the final JSON verdict (so a parser that does not anchor
on the last match is caught). Token counts are whitespace words, and ``cached_tokens`` is the
common word prefix with the previous prompt (a one-entry radix cache); ``prompt_tokens`` /
``completion_tokens`` can be fixed for benchmarks (then ``/generate`` answers a canned verdict
with no per-request work, so that the benchmark measures the client).

Faults, by directive inside a prompt: ``[[fault:KIND*N]]`` makes the first N requests carrying
that prompt fail with KIND (then it answers normally; N=inf: always). Or globally:
``POST /_standin/faults {"kind": KIND, "count": N}`` fails the next N requests of any kind.
KIND: ``500``, ``503``, ``429``, ``400``, ``404``, ``reset`` (connection dropped), ``hang`` (never answers),
``badjson`` (malformed JSON body), ``length`` (cut thinking, finish_reason length),
``garbage`` (an answer with no verdict), ``range`` (a score of 7).
``GET /_standin/stats`` reports request counts and the peak number of requests in flight.

Misconfigured-server cases (``StandinConfig``): ``apis=("chat",)`` serves no ``/generate`` (an
OpenAI-only server: aiohttp answers 404); ``api_key`` makes ``/generate`` and ``/v1/*`` answer 401
without ``Authorization: Bearer <key>`` (``/health`` stays open, as in SGLang and vLLM);
``unknown_model_status`` (e.g. 404 as OpenAI and vLLM, 400 as ``transformers serve``) refuses a
chat request naming a model other than ``model``; ``list_models=False`` lists no model
(``/v1/models`` empty, ``/model_info`` 404).

Run ``python -m tests.helpers.sglang_standin --port 0`` from the repository root (prints ``READY <url>``;
elsewhere put the root on ``PYTHONPATH``), or use :class:`StandinServer` in-process (a thread with its own
event loop): ``from tests.helpers.sglang_standin import StandinConfig, StandinServer``.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from megatron_ixt.data.record import SCORE_AXES as AXES

DIRECTIVE = re.compile(r"\[\[fault:([a-z0-9]+)\*(\d+|inf)\]\]")


@dataclass
class StandinConfig:
    latency: float = 0.0  # seconds before each answer
    prompt_tokens: int | None = None  # fixed counts (benchmarks); None: counted in words
    completion_tokens: int | None = None
    reasoning_parser: bool = True  # chat API: reasoning in reasoning_content
    startup_delay: float = 0.0  # /health answers 503 this long after start
    model: str = "standin/judge-7b"
    apis: tuple = ("generate", "chat")  # the APIs served; a missing one answers 404
    api_key: str | None = None  # required as a bearer token on /generate and /v1/*
    unknown_model_status: int | None = None  # None: any model name is accepted (like SGLang)
    list_models: bool = True  # False: /v1/models lists none, /model_info answers 404


def verdict_for(prompt: str) -> dict:
    """The stand-in judge's final verdict for ``prompt`` (deterministic)."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    verdict = {"critique": f"Stand-in critique {digest[:4].hex()}: clear in parts, one claim is unsupported."}
    verdict.update({axis: 1 + digest[i] % 5 for i, axis in enumerate(AXES)})
    verdict["quality"] = 1 + digest[len(AXES)] % 5
    return verdict


def _answer(prompt: str) -> tuple[str, str]:
    """(reasoning, final answer) of the stand-in judge."""
    v = verdict_for(prompt)
    draft = dict(v, quality=6 - v["quality"], critique="draft")
    reasoning = (f"The document has {len(prompt.split())} words. A first draft of the verdict: "
                 f"{json.dumps(draft)}. Let me reconsider the factual claims before answering.")
    return reasoning, json.dumps(v)


class Standin:
    def __init__(self, config: StandinConfig):
        self.cfg = config
        self.started = time.monotonic()
        self.directive_hits: dict[str, int] = {}
        self.global_fault: dict = {"kind": None, "count": 0}
        self.last_prompt_words: list[str] = []
        self._fast_body = None
        if config.prompt_tokens is not None:
            reasoning, answer = _answer("benchmark prompt")
            self._fast_body = json.dumps({"text": f"<think>\n{reasoning}\n</think>\n\n{answer}", "output_ids": [],
                                          "meta_info": {"id": uuid.uuid4().hex,
                                                        "finish_reason": {"type": "stop", "matched": 151645},
                                                        "prompt_tokens": config.prompt_tokens,
                                                        "weight_version": "default",
                                                        "num_retractions": 0, "reasoning_tokens": 0,
                                                        "completion_tokens": config.completion_tokens or 0,
                                                        "cached_tokens": 0, "e2e_latency": config.latency}}).encode()
        self.stats = {"requests": 0, "generate": 0, "chat": 0, "health": 0, "inflight": 0, "max_inflight": 0,
                      "faults": {}}

    # ------------------------------------------------------------ helpers
    def _fault(self, prompt: str) -> str | None:
        if self.global_fault["count"] > 0:
            self.global_fault["count"] -= 1
            return self.global_fault["kind"]
        m = DIRECTIVE.search(prompt) if "[[fault:" in prompt else None
        if m is None:
            return None
        key = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        n = self.directive_hits.get(key, 0)
        self.directive_hits[key] = n + 1
        limit = math.inf if m.group(2) == "inf" else int(m.group(2))
        return m.group(1) if n < limit else None

    def _tokens(self, prompt: str, completion: str) -> tuple[int, int, int]:
        if self.cfg.prompt_tokens is not None:
            return self.cfg.prompt_tokens, self.cfg.completion_tokens or 0, 0
        words = prompt.split()
        cached = 0
        for a, b in zip(words, self.last_prompt_words):
            if a != b:
                break
            cached += 1
        self.last_prompt_words = words
        return len(words), len(completion.split()), cached

    def _output(self, prompt: str, fault: str | None, max_new_tokens: int) -> tuple[str, str, str]:
        """(reasoning, answer, finish kind)."""
        if fault == "length":
            return "The document has many words and I keep thinking " + "and thinking " * 20, "", "length"
        reasoning, answer = _answer(prompt)
        if fault == "garbage":
            answer = "I cannot rate this document."
        elif fault == "range":
            answer = answer.replace('"efficiency": ', '"efficiency": 7, "_was": ')
        return reasoning, answer, "stop"

    async def _enter(self, request: web.Request, prompt: str):
        """Common fault handling; returns an error response, or None to answer normally."""
        fault = self._fault(prompt)
        if fault:
            self.stats["faults"][fault] = self.stats["faults"].get(fault, 0) + 1
        if self.cfg.latency:
            await asyncio.sleep(self.cfg.latency)
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "reset":
            request.transport.abort()
            raise ConnectionResetError("stand-in: connection reset")
        if fault in ("500", "503"):
            return fault, web.json_response({"error": {"message": f"stand-in internal error {fault}"}},
                                            status=int(fault))
        if fault == "429":
            return fault, web.Response(status=429, text="Too Many Requests", headers={"Retry-After": "0"})
        if fault == "400":
            return fault, web.json_response({"object": "error", "message": "The input is longer than the model's "
                                             "context length.", "type": "BadRequestError", "param": None, "code": 400},
                                            status=400)
        if fault == "404":
            return fault, web.json_response({"detail": "Not Found"}, status=404)
        if fault == "badjson":
            return fault, web.Response(status=200, body=b'{"text": "<think>cut', content_type="application/json")
        return fault, None

    # ------------------------------------------------------------ endpoints
    async def health(self, request: web.Request) -> web.Response:
        self.stats["health"] += 1
        if time.monotonic() - self.started < self.cfg.startup_delay:
            return web.Response(status=503)
        return web.Response(status=200)

    def _refused(self, request: web.Request, model: str | None = None) -> web.Response | None:
        """401 without the API key; the unknown-model error for another model name; else None."""
        if self.cfg.api_key and request.headers.get("Authorization") != f"Bearer {self.cfg.api_key}":
            return web.json_response({"error": {"message": "Unauthorized", "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        if model is not None and self.cfg.unknown_model_status and model != self.cfg.model:
            return web.json_response({"error": {"message": f"The model `{model}` does not exist.",
                                                "type": "NotFoundError", "code": self.cfg.unknown_model_status}},
                                     status=self.cfg.unknown_model_status)
        return None

    async def model_info(self, request: web.Request) -> web.Response:
        if not self.cfg.list_models:
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({"model_path": self.cfg.model, "served_model_name": self.cfg.model,
                                  "tokenizer_path": self.cfg.model, "is_generation": True,
                                  "preferred_sampling_params": None, "weight_version": "default",
                                  "reasoning_parser": "qwen3" if self.cfg.reasoning_parser else None})

    async def models(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if not self.cfg.list_models:
            return web.json_response({"object": "list", "data": []})
        return web.json_response({"object": "list", "data": [{"id": self.cfg.model, "object": "model",
                                                              "created": int(time.time()), "owned_by": "sglang",
                                                              "root": self.cfg.model, "max_model_len": 32768}]})

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.global_fault = {"kind": body["kind"], "count": int(body["count"])}
        return web.json_response(self.global_fault)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def generate(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        raw = await request.read()
        if self._fast_body is not None and b"[[fault:" not in raw and not self.global_fault["count"]:
            # benchmark mode (fixed token counts): a canned answer, no per-request work
            self._count("generate")
            try:
                if self.cfg.latency:
                    await asyncio.sleep(self.cfg.latency)
                return web.Response(body=self._fast_body, content_type="application/json")
            finally:
                self.stats["inflight"] -= 1
        body = json.loads(raw)
        texts = body["text"]
        if isinstance(texts, list):
            outs = [await self._generate_one(request, t, body) for t in texts]
            if any(isinstance(o, web.Response) for o in outs):
                return next(o for o in outs if isinstance(o, web.Response))
            return web.json_response(outs)
        out = await self._generate_one(request, texts, body)
        return out if isinstance(out, web.Response) else web.json_response(out)

    async def _generate_one(self, request, prompt: str, body: dict):
        self._count("generate")
        try:
            fault, error = await self._enter(request, prompt)
            if error is not None:
                return error
            max_new = int((body.get("sampling_params") or {}).get("max_new_tokens", 128))
            reasoning, answer, kind = self._output(prompt, fault, max_new)
            text = f"<think>\n{reasoning}\n</think>\n\n{answer}" if kind == "stop" else f"<think>\n{reasoning}"
            n_in, n_out, cached = self._tokens(prompt, text)
            finish = {"type": "length", "length": max_new} if kind == "length" else {"type": "stop", "matched": 151645}
            return {"text": text, "output_ids": [], "meta_info": {
                "id": uuid.uuid4().hex, "finish_reason": finish, "prompt_tokens": n_in, "weight_version": "default",
                "num_retractions": 0, "reasoning_tokens": 0, "completion_tokens": n_out if kind == "stop" else max_new,
                "cached_tokens": cached, "e2e_latency": self.cfg.latency}}
        finally:
            self.stats["inflight"] -= 1

    async def chat(self, request: web.Request) -> web.Response:
        self._count("chat")
        try:
            body = await request.json()
            refused = self._refused(request, body.get("model"))
            if refused is not None:
                return refused
            prompt = "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
            fault, error = await self._enter(request, prompt)
            if error is not None:
                return error
            max_new = int(body.get("max_completion_tokens") or body.get("max_tokens") or 128)
            reasoning, answer, kind = self._output(prompt, fault, max_new)
            if self.cfg.reasoning_parser:
                content, reasoning_content = (answer or None), reasoning
            else:
                content = f"<think>\n{reasoning}\n</think>\n\n{answer}" if kind == "stop" else f"<think>\n{reasoning}"
                reasoning_content = None
            n_in, n_out, cached = self._tokens(prompt, (reasoning or "") + " " + (answer or ""))
            return web.json_response({
                "id": uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or self.cfg.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                     "reasoning_content": reasoning_content},
                             "logprobs": None, "finish_reason": kind,
                             "matched_stop": 151645 if kind == "stop" else None}],
                "usage": {"prompt_tokens": n_in, "total_tokens": n_in + n_out, "completion_tokens": n_out,
                          "prompt_tokens_details": {"cached_tokens": cached}, "reasoning_tokens": 0,
                          "completion_tokens_details": None},
                "metadata": {"weight_version": "default"}})
        finally:
            self.stats["inflight"] -= 1

    def _count(self, kind: str) -> None:
        self.stats["requests"] += 1
        self.stats[kind] += 1
        self.stats["inflight"] += 1
        self.stats["max_inflight"] = max(self.stats["max_inflight"], self.stats["inflight"])

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health)
        app.router.add_get("/model_info", self.model_info)
        app.router.add_get("/v1/models", self.models)
        if "generate" in self.cfg.apis:
            app.router.add_post("/generate", self.generate)
            app.router.add_put("/generate", self.generate)
        if "chat" in self.cfg.apis:
            app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/_standin/faults", self.control)
        app.router.add_get("/_standin/stats", self.get_stats)
        return app


class StandinServer:
    """The stand-in in a background thread: ``start()`` -> url, ``stop()``; restartable on its port."""

    def __init__(self, config: StandinConfig | None = None, port: int = 0, host: str = "127.0.0.1"):
        self.config = config or StandinConfig()
        self.host, self.port = host, port
        self.standin: Standin | None = None
        self._loop = None
        self._thread = None
        self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def boot():
            self.standin = Standin(self.config)
            self._runner = web.AppRunner(self.standin.app(), access_log=None, handle_signals=False,
                                         shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await site.start()
            self.port = self._runner.addresses[0][1]

        def serve():
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(boot())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("stand-in server did not start")
        return self.url

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--prompt-tokens", type=int, default=None)
    p.add_argument("--completion-tokens", type=int, default=None)
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--no-reasoning-parser", action="store_true")
    args = p.parse_args(argv)
    cfg = StandinConfig(latency=args.latency, prompt_tokens=args.prompt_tokens,
                        completion_tokens=args.completion_tokens, startup_delay=args.startup_delay,
                        reasoning_parser=not args.no_reasoning_parser)

    async def serve():
        runner = web.AppRunner(Standin(cfg).app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, reuse_address=True, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        print(f"READY http://{args.host}:{port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
