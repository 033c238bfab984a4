"""The sglang.Engine backend's batching and bad-item isolation.

sglang is not installed here (GPU only), so the engine is an injected object with the real
``Engine.async_generate(prompt=[...], sampling_params={...})`` signature and return shape (one
``{"text", "output_ids", "meta_info"}`` per prompt), and SGLang's batch behaviour: one prompt
over the context length fails the whole call with ``ValueError``. This tests our chunking
logic only; the real engine is exercised on a GPU machine (docs/annotate.md).
"""
import asyncio
import json

import pytest

from annotate.backends import BackendError, Request
from annotate.backends.engine import EngineBackend, EngineConfig, make_engine
from annotate.prompt import ChatFormatter


class BatchFailingEngine:
    def __init__(self, context_len_words: int = 50):
        self.calls = []
        self.limit = context_len_words

    async def async_generate(self, prompt=None, sampling_params=None, **kwargs):
        assert isinstance(prompt, list) and isinstance(sampling_params, dict)
        self.calls.append(len(prompt))
        await asyncio.sleep(0.001)
        for p in prompt:
            if len(p.split()) > self.limit:
                raise ValueError(f"The input ({len(p.split())} tokens) is longer than the model's context length")
        verdict = {"critique": "fine", "writing_style": 3, "expertise": 3, "educational_value": 3,
                   "factual_accuracy": 3, "efficiency": 3, "quality": 3}
        return [{"text": "<think>hm</think>" + json.dumps(verdict), "output_ids": [1, 2],
                 "meta_info": {"id": "r", "finish_reason": {"type": "stop", "matched": 2},
                               "prompt_tokens": len(p.split()),
                               "completion_tokens": 20, "cached_tokens": 5}} for p in prompt]


def test_batches_and_isolates_a_bad_item():
    engine = BatchFailingEngine()
    backend = EngineBackend(EngineConfig(model_path="m", batch_size=16, batch_wait=0.01), ChatFormatter(None), engine)

    async def go():
        reqs = [Request(f"d{i}", "word " * (200 if i == 11 else 5), "") for i in range(40)]
        return await asyncio.gather(*(backend.complete(r) for r in reqs), return_exceptions=True)

    results = asyncio.run(go())
    bad = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert bad == [11] and isinstance(results[11], BackendError) and results[11].reason == "engine"
    assert "context length" in str(results[11])
    good = [r for r in results if not isinstance(r, Exception)]
    assert all(r.finish_reason == "stop" and r.cached_tokens == 5 and r.prompt_tokens == 5 for r in good)
    # 40 requests -> batches 16, 16, 8; the batch holding item 11 is bisected down to it:
    # 16 -> 8 (ok) + 8 -> 4 (ok) + 4 -> 2 (ok) + 2 -> 1 (ok) + 1 (fails alone)
    assert sorted(engine.calls) == sorted([16, 8, 8, 4, 4, 2, 2, 1, 1, 16, 8])
    assert backend.errors == {"ValueError": 5}  # the failed calls: 16, 8, 4, 2 and 1 prompts


def test_missing_sglang_gives_a_clear_error():
    try:
        import sglang  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs the sglang package"):
            make_engine(EngineConfig(model_path="m"))
    else:
        pytest.skip("sglang is installed")
