"""megatron_ixt.generate: batched KV-cache decoding through the in-memory export equals the no-cache path."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers.export import VOCAB, build_model, save_model_checkpoint, tiny_config

EOD = VOCAB
PROMPTS = [[(7 * i + 3 * j) % VOCAB for j in range(n)] for i, n in enumerate((5, 17, 9, 30, 2, 12))]
NEW = 12
MIN_MARGIN = 1e-3  # top-1 minus top-2 logit at every greedy step: no near-ties decide the comparison


def peaked_model(**overrides):
    """A random model with large weights: confident (far from tied) next-token choices."""
    cfg = tiny_config(init_method_std=0.25, **overrides)
    return cfg, build_model(cfg)


def greedy_margins(model, prompt, new):
    """The top-1 minus top-2 logit at each step that chose a token of ``new``."""
    from tests.helpers.export import megatron_logits

    ids = torch.tensor([prompt + new[:-1]])
    top = megatron_logits(model, ids, VOCAB + 1)[0, len(prompt) - 1:].topk(2, dim=-1).values
    return (top[:, 0] - top[:, 1]).tolist()


@pytest.mark.parametrize("overrides", [dict(num_query_groups=2),
                                       dict(normalization="LayerNorm", swiglu=False,
                                            position_embedding_type="learned_absolute")],
                         ids=["llama_gqa", "gpt2_learned_positions"])
def test_batched_greedy_equals_no_cache_reference(dist, overrides):
    from megatron_ixt.export.hf import to_hf_model
    from megatron_ixt.generate import generate, greedy
    from megatron_ixt.model import transformer_config

    cfg, model = peaked_model(**overrides)
    reference = [greedy(model, p, NEW, EOD, cfg.model.seq_length, torch.device("cpu"), VOCAB + 1) for p in PROMPTS]
    assert min(m for p, new in zip(PROMPTS, reference) for m in greedy_margins(model, p, new)) > MIN_MARGIN
    hf = to_hf_model(model, cfg, transformer_config(cfg), VOCAB + 1, EOD)
    assert generate(hf, PROMPTS, NEW, EOD, batch_size=4) == reference  # left-padded batches of mixed lengths
    assert sum(len(r) for r in reference) >= 4 * NEW

    # another EOD id: a prompt's generation ends with it (kept as the last token), the others run on
    longest = max(reference, key=len)
    eod = longest[2]
    expected = [greedy(model, p, NEW, eod, cfg.model.seq_length, torch.device("cpu"), VOCAB + 1) for p in PROMPTS]
    assert any(len(e) < NEW and e[-1] == eod for e in expected)
    assert generate(hf, PROMPTS, NEW, eod, batch_size=4) == expected


def test_sampling_is_seeded(dist):
    from megatron_ixt.export.hf import to_hf_model
    from megatron_ixt.generate import generate
    from megatron_ixt.model import transformer_config

    cfg = tiny_config()
    hf = to_hf_model(build_model(cfg), cfg, transformer_config(cfg), VOCAB + 1, EOD)
    sample = lambda seed: generate(hf, PROMPTS, NEW, EOD, temperature=1.0, top_p=0.9, seed=seed)  # noqa: E731
    first = sample(1)
    assert first == sample(1)
    assert first != sample(2)
    assert first != generate(hf, PROMPTS, NEW, EOD)


PREFIX, NEGATIVE_PREFIX = [11, 12, 13], [40, 41]  # stand-ins for a steering prefix and a low-level one


def guided_margins(model, cond, neg, new, scale):
    """The top-1 minus top-2 guided logit at each step that chose a token of ``new``."""
    from megatron_ixt.generate import guided_logits
    from tests.helpers.export import megatron_logits

    def logits(prompt):
        return megatron_logits(model, torch.tensor([prompt + new[:-1]]), VOCAB + 1)[0, len(prompt) - 1:]

    top = guided_logits(logits(cond), logits(neg), scale).topk(2, dim=-1).values
    return (top[:, 0] - top[:, 1]).tolist()


def test_guided_decoding(dist):
    """Guided steering: the KV-cache batch of prompts and negatives equals the no-cache reference loop and
    one prompt at a time; scale 1 equals plain steering, scale 0 against unprefixed negatives equals
    unprefixed decoding."""
    from megatron_ixt.export.hf import to_hf_model
    from megatron_ixt.generate import generate, greedy
    from megatron_ixt.model import transformer_config

    cfg, model = peaked_model(num_query_groups=2)
    hf = to_hf_model(model, cfg, transformer_config(cfg), VOCAB + 1, EOD)
    steered = [PREFIX + p for p in PROMPTS]
    negatives = [NEGATIVE_PREFIX + p for p in PROMPTS]
    scale = 2.5
    reference = [greedy(model, c, NEW, EOD, cfg.model.seq_length, torch.device("cpu"), VOCAB + 1, negative=n,
                        guidance_scale=scale) for c, n in zip(steered, negatives)]
    assert min(m for c, n, new in zip(steered, negatives, reference) for m in guided_margins(model, c, n, new, scale)) \
        > MIN_MARGIN
    assert reference != generate(hf, steered, NEW, EOD)  # the guidance changes the output
    assert generate(hf, steered, NEW, EOD, batch_size=4, negatives=negatives, guidance_scale=scale) == reference
    assert generate(hf, steered, NEW, EOD, batch_size=1, negatives=negatives, guidance_scale=scale) == reference

    assert generate(hf, steered, NEW, EOD, batch_size=4, negatives=negatives, guidance_scale=1.0) == \
        generate(hf, steered, NEW, EOD, batch_size=4)
    assert generate(hf, steered, NEW, EOD, batch_size=4, negatives=PROMPTS, guidance_scale=0.0) == \
        generate(hf, PROMPTS, NEW, EOD, batch_size=4)
    sample = lambda seed: generate(hf, steered, NEW, EOD, negatives=negatives, guidance_scale=scale,  # noqa: E731
                                   temperature=1.0, top_p=0.9, seed=seed)
    assert sample(1) == sample(1) != sample(2)


def run_generate(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.generate", *args], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_cli_kv_cache_stop_string_and_hf_export(dist, tmp_path):
    """The CLI's default path equals --no-kv-cache; --stop cuts the text; transformers' own greedy
    generate on the written export gives the same tokens."""
    from transformers import AutoModelForCausalLM

    from tools.convert_to_hf import convert, get_args

    cfg, model = peaked_model(num_query_groups=2)
    load = str(tmp_path / "ckpt")
    save_model_checkpoint(load, model, cfg)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(map(str, p))}) + "\n" for p in PROMPTS))
    common = ["--load", load, "--steer", "none", "--prompt-file", str(prompts), "--max-new-tokens", str(NEW)]

    def results(*extra):
        out = tmp_path / "out.jsonl"
        run_generate(*common, "--output", str(out), *extra)
        return [json.loads(line) for line in out.read_text().splitlines()]

    reference = results("--no-kv-cache")
    fast = results("--batch-size", "4")
    assert [r["generated_tokens"] for r in fast] == [r["generated_tokens"] for r in reference]
    assert min(m for p, r in zip(PROMPTS, reference) for m in greedy_margins(model, p, r["generated_tokens"])) \
        > MIN_MARGIN

    new = reference[1]["generated_tokens"]
    stop = f"{new[2]} {new[3]}"
    full = reference[1]["text"]
    cut = results("--stop", stop)[1]
    assert cut["text"] == full[:full.index(stop)]
    assert new[:len(cut["generated_tokens"])] == cut["generated_tokens"] and len(cut["generated_tokens"]) <= 4

    out = str(tmp_path / "hf")
    convert(get_args(["--load", load, "--output", out]))
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for prompt, ref in zip(PROMPTS, reference):
        tokens = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, eos_token_id=None)
        assert tokens[0, len(prompt):].tolist() == ref["generated_tokens"]
