"""lm-eval model ``ixt_hf``: lm-eval's Hugging Face model with an IXT steering prefix.

    --model ixt_hf --model_args pretrained=DIR,steer=quality:5
    --model ixt_hf --model_args load=CKPT[,iteration=N],steer=quality:5

``DIR`` is a ``tools/convert_to_hf.py`` export; ``CKPT`` a training checkpoint, exported in memory
(``megatron_ixt.export.in_memory.export_checkpoint``, through ``megatron_ixt.inference.load_for_inference``).
``steer`` is ``KIND``, ``KIND:LEVEL`` or ``none`` (default), looked up in ``DIR/ixt_steering.json``
(or the in-memory export's steering table). The prefix reaches the model exactly as in
training: its token ids, then the tokens of the document, which here is the task's text:
- loglikelihood (multiple choice, ...): ``prefix + tokens(context + continuation)``, the
  continuation scored as usual; an empty context is the prefix alone;
- generate_until: ``prefix + tokens(context)``, then generation.
Perplexity tasks (loglikelihood_rolling) under a prefix are refused.

Guided steering: ``guidance_scale=G`` (default 1: plain steering) and ``negative_steer`` (``none``,
the default, or e.g. ``quality:1``) in ``--model_args``. The negative of each sequence is the same
tokens after the negative prefix instead of the steering prefix; the model's logits at each scored
position become ``neg + G (cond - neg)`` (``megatron_ixt.generate.guided_logits``):
- loglikelihood: lm-eval's ``log_softmax`` of those guided logits, i.e. the guided per-token
  log-probabilities of the continuation (an empty context needs a negative prefix: with
  ``negative_steer=none`` its first token has no unconditioned prediction, and is refused);
- generate_until: each token is chosen from the guided logits, the prompt and its negative decoded
  in one batch with the KV cache (``megatron_ixt.generate.generate``).
"""
from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from megatron_ixt.export.steering import steering_tokens, table_tokens
from megatron_ixt.generate import generate, guided_logits


@register_model("ixt_hf")
class IXTHFLM(HFLM):
    """HFLM whose inputs start with the steering prefix ``steer`` of the export ``pretrained``, guided
    against ``negative_steer`` when ``guidance_scale`` is not 1 (module docstring)."""

    def __init__(self, pretrained: str | None = None, steer: str | None = "none", guidance_scale: float = 1.0,
                 negative_steer: str | None = "none", load: str | None = None, iteration: int | None = None,
                 **kwargs):
        if (pretrained is None) == (load is None) or not isinstance(pretrained or load, str):
            raise ValueError("ixt_hf: give pretrained=DIR (a megatron-ixt export) or load=CKPT (a training "
                             "checkpoint), one of them")
        if load is not None:
            from megatron_ixt.export.in_memory import export_checkpoint

            export = export_checkpoint(load, None if iteration is None else int(iteration))
            lookup = lambda spec: table_tokens(export.steering, spec, f"load={load}")  # noqa: E731
            kwargs.update(pretrained=export.model, tokenizer=export.tokenizer)
        else:
            lookup = lambda spec: steering_tokens(pretrained, spec)  # noqa: E731
            kwargs["pretrained"] = pretrained
        self.steering_prefix: list[int] = lookup(str(steer or "none"))
        self.guidance_scale = float(guidance_scale)
        self.negative_prefix: list[int] | None = None  # None: no guidance
        if self.guidance_scale != 1.0:
            if not self.steering_prefix:
                raise ValueError(f"ixt_hf: guidance_scale={guidance_scale} needs a steering prefix "
                                 "(steer=KIND[:LEVEL])")
            self.negative_prefix = lookup(str(negative_steer or "none"))
        elif str(negative_steer or "none") != "none":
            raise ValueError("ixt_hf: negative_steer needs a guidance_scale other than 1 (1 is plain steering)")
        super().__init__(**kwargs)

    def _negative_rows(self, rows: list[list[int]]) -> list[list[int]]:
        """Each row with its steering prefix replaced by the negative prefix."""
        n = len(self.steering_prefix)
        for row in rows:
            if row[:n] != self.steering_prefix:
                raise ValueError("ixt_hf: a sequence lost its steering prefix to truncation (context longer than "
                                 "max_length); guidance needs it")
        return [self.negative_prefix + row[n:] for row in rows]

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        cond = super()._model_call(inps, attn_mask, labels)
        if self.negative_prefix is None:
            return cond
        rows = inps.tolist()  # right-padded: every row's tokens start at position 0
        neg = super()._model_call(torch.tensor(self._negative_rows(rows), dtype=inps.dtype, device=inps.device))
        p, n = len(self.steering_prefix), len(self.negative_prefix)
        first = p - 1 if n else p  # the first position whose prediction the negative pass also makes
        guided = cond.clone()
        guided[:, first:] = guided_logits(cond[:, first:], neg[:, first - (p - n):], self.guidance_scale).to(cond.dtype)
        return guided

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        if self.negative_prefix is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        mask = generation_kwargs.pop("attention_mask", None)
        rows = [row[m.bool()].tolist()
                for row, m in zip(context, mask if mask is not None else torch.ones_like(context))]
        sample = bool(generation_kwargs.get("do_sample")) and float(generation_kwargs.get("temperature") or 0) > 0
        new = generate(self.model, rows, max_length - context.shape[1], self.eot_token_id, batch_size=len(rows),
                       temperature=float(generation_kwargs["temperature"]) if sample else 0.0,
                       top_p=float(generation_kwargs.get("top_p") or 1.0), stops=stop, detokenize=self.tok_decode,
                       negatives=self._negative_rows(rows), guidance_scale=self.guidance_scale)
        pad = self.tokenizer.pad_token_id
        out = torch.full((len(rows), max_length), pad, dtype=context.dtype, device=context.device)
        out[:, :context.shape[1]] = context
        for i, tokens in enumerate(new):
            out[i, context.shape[1]:context.shape[1] + len(tokens)] = torch.tensor(tokens, dtype=context.dtype)
        return out

    def _encode_pair(self, context: str, continuation: str):
        context_enc, continuation_enc = super()._encode_pair(context, continuation)
        return self.steering_prefix + context_enc, continuation_enc

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if not self.steering_prefix:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        encoded = []
        for context, continuation in (r.args for r in requests):
            if not context and self.negative_prefix == []:
                raise ValueError("ixt_hf: an empty context under guidance needs a negative prefix "
                                 "(negative_steer=KIND:LEVEL); with none the first token has no unconditioned "
                                 "prediction")
            if context:
                context_enc, continuation_enc = self._encode_pair(context, continuation)
            else:  # the document is the continuation alone: it follows the prefix
                context_enc = list(self.steering_prefix)
                continuation_enc = self.tok_encode(continuation, add_special_tokens=False)
            encoded.append(((context, continuation), context_enc, continuation_enc))
        return self._loglikelihood_tokens(encoded, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if self.steering_prefix:
            raise NotImplementedError("ixt_hf: perplexity (loglikelihood_rolling) tasks under a steering prefix "
                                      "are not supported; run them with steer=none")
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def tok_batch_encode(self, strings: list[str], padding_side: str = "left",
                         left_truncate_len: int | None = None, truncation: bool = False):
        if not self.steering_prefix:
            return super().tok_batch_encode(strings, padding_side, left_truncate_len, truncation)
        n = len(self.steering_prefix)
        if left_truncate_len is not None:
            left_truncate_len = max(1, left_truncate_len - n)
        ids, mask = super().tok_batch_encode(strings, padding_side, left_truncate_len, truncation)
        rows = [self.steering_prefix + row[m.bool()].tolist() for row, m in zip(ids, mask)]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        out_ids = torch.full((len(rows), width), pad, dtype=ids.dtype)
        out_mask = torch.zeros((len(rows), width), dtype=mask.dtype)
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            out_ids[i, cols] = torch.tensor(r, dtype=ids.dtype)
            out_mask[i, cols] = 1
        return out_ids, out_mask
