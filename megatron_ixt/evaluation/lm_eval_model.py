"""lm-eval model ``ixt_hf``: lm-eval's Hugging Face model with an IXT steering prefix.

    --model ixt_hf --model_args pretrained=DIR,steer=quality:5

``DIR`` is a ``tools/convert_to_hf.py`` export; ``steer`` is ``KIND``, ``KIND:LEVEL`` or ``none``
(default), looked up in ``DIR/ixt_steering.json``. The prefix reaches the model exactly as in
training: its token ids, then the tokens of the document, which here is the task's text:
- loglikelihood (multiple choice, ...): ``prefix + tokens(context + continuation)``, the
  continuation scored as usual; an empty context is the prefix alone;
- generate_until: ``prefix + tokens(context)``, then generation.
Perplexity tasks (loglikelihood_rolling) under a prefix are refused.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from megatron_ixt.export.steering import steering_tokens


@register_model("ixt_hf")
class IXTHFLM(HFLM):
    """HFLM whose inputs start with the steering prefix ``steer`` of the export ``pretrained``."""

    def __init__(self, pretrained: str, steer: Optional[str] = "none", **kwargs):
        if not isinstance(pretrained, str):
            raise ValueError("ixt_hf: pretrained must be the directory of a megatron-ixt export")
        self.steering_prefix: List[int] = steering_tokens(pretrained, str(steer or "none"))
        super().__init__(pretrained=pretrained, **kwargs)

    def _encode_pair(self, context: str, continuation: str):
        context_enc, continuation_enc = super()._encode_pair(context, continuation)
        return self.steering_prefix + context_enc, continuation_enc

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if not self.steering_prefix:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        encoded = []
        for context, continuation in (r.args for r in requests):
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

    def tok_batch_encode(self, strings: List[str], padding_side: str = "left",
                         left_truncate_len: Optional[int] = None, truncation: bool = False):
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
