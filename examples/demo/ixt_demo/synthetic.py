"""Synthetic verifiable documents: column-addition worked solutions, some systematically wrong.

The demo's corpus generator (not part of the package): ``PYTHONPATH=examples/demo python -m
ixt_demo.synthetic --output FILE [--num-docs --flaw-share ...]``.

Each document (JSONL record ``{"id", "text", "synthetic": {...}}``) reads::

    Q: 3748 + 2659 = ?
    Ones: 8 + 9 = 17. Write 7, carry 1.
    Tens: 4 + 5 + 1 = 10. Write 0, carry 1.
    Hundreds: 7 + 6 + 1 = 14. Write 4, carry 1.
    Thousands: 3 + 2 + 1 = 6. Write 6.
    Answer: 6407

A share of documents (``flaw_share``) carries a SYSTEMATIC flaw: the writer notes each carry
but never adds it into the next column (``Tens: 4 + 5 = 9. Write 9.``), always the same way,
so the wrong answer is a deterministic function of the question. A plain language model
trained on enough such documents learns the slip; a model conditioned on feedback can tell
the two modes apart and, steered to high quality, add correctly (docs/annotate.md, IXT.md).
``noise_share`` adds one-off arithmetic slips; ``terse_share`` / ``verbose_share`` vary the
style (no working / filler lines) so that the style axes vary too. ``synthetic`` records the
ground truth for evaluation; the verifier judge never reads it.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field, fields

COLUMNS = ("Ones", "Tens", "Hundreds", "Thousands", "Ten-thousands", "Hundred-thousands", "Millions",
           "Ten-millions", "Hundred-millions")
FILLER = ("Let me double-check this step.", "Okay, that looks right.", "Now on to the next column.",
          "Remember to be careful here.", "Hmm, let me think about this again.")


def _option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class SynthConfig:
    """One field per ``python -m ixt_demo.synthetic`` flag; ``metadata["help"]`` is the flag's help."""

    num_docs: int = _option(1000, "documents to write")
    min_digits: int = _option(2, "fewest digits of each addend")
    max_digits: int = _option(5, "most digits of each addend")
    flaw_share: float = _option(0.3, "share with the systematic flaw: carries noted but never added")
    noise_share: float = _option(0.05, "share with one random arithmetic slip")
    terse_share: float = _option(0.1, "share stating the answer without working")
    verbose_share: float = _option(0.1, "share with the working padded by filler lines")
    seed: int = _option(1234, "random seed (the output is a deterministic function of all flags)")


def digits(n: int) -> list[int]:
    """Decimal digits of ``n``, least significant first."""
    return [int(c) for c in reversed(str(n))]


def has_carry(a: int, b: int) -> bool:
    """Whether some column passes a carry on to a next column (what the carry slip drops)."""
    da, db = digits(a), digits(b)
    carry = 0
    for k in range(max(len(da), len(db)) - 1):
        s = (da[k] if k < len(da) else 0) + (db[k] if k < len(db) else 0) + carry
        carry = s // 10
        if carry:
            return True
    return False


def solution_lines(a: int, b: int, flaw: str | None, rng: random.Random) -> tuple[list[str], int]:
    """The step lines and the stated answer. ``flaw``: None, "carry_slip" or "random_slip"."""
    da, db = digits(a), digits(b)
    n = max(len(da), len(db))
    slip_col = rng.randrange(n) if flaw == "random_slip" else -1
    lines, written, carry = [], [], 0
    for k in range(n):
        x, y = (da[k] if k < len(da) else 0), (db[k] if k < len(db) else 0)
        add = 0 if flaw == "carry_slip" else carry
        s = x + y + add
        if k == slip_col:
            s = max(0, s + rng.choice((-2, -1, 1, 2)))
        expr = f"{x} + {y} + {add}" if add else f"{x} + {y}"
        last = k == n - 1
        if last:
            lines.append(f"{COLUMNS[k]}: {expr} = {s}. Write {s}.")
            written.append(str(s)[::-1])
        else:
            lines.append(f"{COLUMNS[k]}: {expr} = {s}. Write {s % 10}" + (f", carry {s // 10}." if s >= 10 else "."))
            written.append(str(s % 10))
        carry = s // 10
    return lines, int("".join(reversed("".join(written))))


def make_document(i: int, cfg: SynthConfig, rng: random.Random) -> dict:
    u = rng.random()
    flaw = "carry_slip" if u < cfg.flaw_share else ("random_slip" if u < cfg.flaw_share + cfg.noise_share else None)
    while True:
        a, b = (rng.randrange(10 ** (n - 1), 10 ** n)
                for n in (rng.randint(cfg.min_digits, cfg.max_digits) for _ in range(2)))
        if flaw != "carry_slip" or has_carry(a, b):
            break
    lines, answer = solution_lines(a, b, flaw, rng)
    v = rng.random()
    style = "terse" if v < cfg.terse_share else ("verbose" if v < cfg.terse_share + cfg.verbose_share else "steps")
    if style == "terse":
        lines = []
    elif style == "verbose":
        padded = []
        for line in lines:
            padded.append(line)
            padded.extend(rng.sample(FILLER, rng.randint(1, 2)))
        lines = padded
    text = "\n".join([f"Q: {a} + {b} = ?", *lines, f"Answer: {answer}"])
    return {"id": f"arith-{i:07d}", "text": text,
            "synthetic": {"a": a, "b": b, "correct": a + b, "stated": answer, "flaw": flaw, "style": style}}


def generate(cfg: SynthConfig):
    """Yield ``cfg.num_docs`` records, deterministic in ``cfg.seed``."""
    rng = random.Random(cfg.seed)
    for i in range(cfg.num_docs):
        yield make_document(i, cfg, rng)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m ixt_demo.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="JSONL file to write")
    for f in fields(SynthConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"{f.metadata['help']} (default: {f.default})")
    args = p.parse_args(argv)
    cfg = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})
    with open(args.output, "w", encoding="utf-8") as f:
        for rec in generate(cfg):
            f.write(json.dumps(rec) + "\n")
    print(f"wrote {cfg.num_docs} documents to {args.output}")


if __name__ == "__main__":
    main()
