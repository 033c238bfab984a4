"""Judge prompts: a versioned rubric template, document truncation, chat formatting.

A template is a UTF-8 text file containing the placeholder ``{{document}}`` exactly once.
Everything before the placeholder (the rubric) is identical for every request, so SGLang's
radix cache serves it from KV cache; the document comes last. The template's version is
``<file stem>@<first 8 hex of its sha256>``, so any edit changes the recorded version.

Long documents are cut to a token budget keeping the head (2/3) and the tail (1/3) with a
marker line in between; the cut is described by a dict stored in the record
(``{"unit", "original", "kept_head", "kept_tail"}``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

PLACEHOLDER = "{{document}}"
PROMPT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")
DEFAULT_TEMPLATE = os.path.join(PROMPT_DIR, "rubric_v1.txt")
OMISSION_MARKER = "\n\n[... {n} {unit} omitted ...]\n\n"
CHARS_PER_TOKEN = 4  # the estimate used when no tokenizer is given


@dataclass(frozen=True)
class PromptTemplate:
    text: str
    path: str
    version: str
    sha256: str

    @classmethod
    def load(cls, path: str = DEFAULT_TEMPLATE) -> PromptTemplate:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        count = text.count(PLACEHOLDER)
        if count != 1:
            raise ValueError(f"{path}: prompt template must contain {PLACEHOLDER} exactly once (found {count})")
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        stem = os.path.basename(path).rsplit(".", 1)[0]
        return cls(text=text, path=os.path.abspath(path), version=f"{stem}@{sha[:8]}", sha256=sha)

    @property
    def prefix(self) -> str:
        """The shared rubric: everything before the document."""
        return self.text.split(PLACEHOLDER, 1)[0]

    def render(self, document: str) -> str:
        prefix, suffix = self.text.split(PLACEHOLDER, 1)
        return prefix + document + suffix


class TokenCounter:
    """Counts and cuts text in tokens of ``tokenizer`` (a local Hugging Face tokenizer path or
    name), or, without one, in estimated tokens of ``CHARS_PER_TOKEN`` characters."""

    def __init__(self, tokenizer: str | None = None):
        self.name = tokenizer
        self._tok = None
        if tokenizer:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(tokenizer)
        self.hf_tokenizer = self._tok
        self.unit = "tokens" if self._tok is not None else f"est_tokens({CHARS_PER_TOKEN}chars)"

    def count(self, text: str) -> int:
        if self._tok is None:
            return -(-len(text) // CHARS_PER_TOKEN)
        return len(self._tok.encode(text, add_special_tokens=False))

    def truncate(self, text: str, budget: int) -> tuple[str, dict | None]:
        """Cut ``text`` to at most ``budget`` tokens (plus the marker), head and tail kept.

        Returns ``(text, None)`` when it fits, else ``(cut_text, info)``.
        """
        if budget <= 0:
            return text, None
        if self._tok is None:
            limit = budget * CHARS_PER_TOKEN
            if len(text) <= limit:
                return text, None
            head, tail = limit - limit // 3, limit // 3
            original = self.count(text)
            kept = text[:head], text[len(text) - tail:] if tail else ""
            n_head, n_tail = self.count(kept[0]), self.count(kept[1])
        else:
            # A token covers at least one UTF-8 byte, so short texts need no tokenization.
            if len(text.encode("utf-8")) <= budget:
                return text, None
            ids = self._tok.encode(text, add_special_tokens=False)
            if len(ids) <= budget:
                return text, None
            n_head, n_tail = budget - budget // 3, budget // 3
            original = len(ids)
            kept = (self._tok.decode(ids[:n_head]), self._tok.decode(ids[len(ids) - n_tail:]) if n_tail else "")
        omitted = original - n_head - n_tail
        cut = kept[0] + OMISSION_MARKER.format(n=omitted, unit="tokens") + kept[1]
        return cut, {"unit": self.unit, "original": original, "kept_head": n_head, "kept_tail": n_tail}


class ChatFormatter:
    """Turns the rendered user message into the text sent to a raw-completion API
    (SGLang ``/generate``, ``sglang.Engine``): the model's chat template when a tokenizer is
    given, else the message unchanged (then the template file must carry the chat markup)."""

    def __init__(self, hf_tokenizer=None, chat_template_kwargs: dict | None = None):
        self._tok = hf_tokenizer
        self.kwargs = dict(chat_template_kwargs or {})

    def __call__(self, user_message: str) -> str:
        if self._tok is None:
            return user_message
        return self._tok.apply_chat_template(
            [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True, **self.kwargs
        )
