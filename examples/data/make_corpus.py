"""Generate English-like annotated corpora (the bundled example, test fixtures, benchmarks).

Each document has a latent quality 1..5 that shapes its text (high: structured explanations with
correct arithmetic; low: repetition, typos, spam and wrong arithmetic) and, when annotated, its
``ixt`` block (docs/CONTRACTS.md section 1). Output is deterministic for a given seed.

    python examples/data/make_corpus.py --docs 300 --seed 0 --output examples/data/example.jsonl
"""
from __future__ import annotations

import argparse
import json
import random

TOPICS = {
    "astronomy": ("star planet orbit telescope galaxy comet nebula moon eclipse spectrum gravity "
                  "asteroid observatory satellite light-year", "astronomers observers physicists"),
    "cooking": ("recipe oven flour butter sauce onion garlic dough pan spice vegetable broth "
                "kitchen knife temperature", "cooks chefs bakers"),
    "history": ("empire treaty king revolution archive battle dynasty republic merchant harbor "
                "parliament chronicle province colony monument", "historians archivists scholars"),
    "programming": ("function variable compiler loop array pointer module interface database query "
                    "thread cache server library algorithm", "programmers engineers developers"),
    "gardening": ("soil seed tomato compost root leaf pruning shade rose irrigation mulch greenhouse "
                  "fertilizer bulb harvest", "gardeners growers farmers"),
    "finance": ("budget interest loan savings inflation stock bond tax income account dividend "
                "mortgage portfolio market pension", "investors accountants economists"),
    "biology": ("cell protein enzyme gene membrane species bacteria organism tissue mutation "
                "ecosystem molecule neuron habitat evolution", "biologists researchers students"),
}
ADJECTIVES = ("important simple careful common large small modern ancient useful complex stable "
              "rapid gradual typical rare precise practical basic detailed".split())
VERBS = ("explains changes affects controls supports measures reduces increases describes "
         "requires produces protects reveals limits connects".split())
CONNECTIVES = ("However,", "For example,", "In practice,", "As a result,", "In contrast,", "Moreover,",
               "Consequently,", "At first,", "Finally,", "In general,")
_ONSETS = ("b bl br c ch cl cr d dr f fl fr g gl gr h j k l m n p pl pr qu r s sc sh sl sp st str t th tr v w wh "
           "y z").split()
_VOWELS = "a e i o u ai ea ee ie oa ou oo".split()
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "rt", "th", "x"]
_SUFFIXES = ["", "", "", "s", "ed", "ing", "er", "ly", "tion", "ment", "ness", "ity", "al", "ous"]


def _lexicon(size: int = 30000) -> list:
    """Deterministic English-like pseudo-words; the corpus samples them with a Zipf-like law."""
    rng = random.Random(12345)
    words = set()
    while len(words) < size:
        n = rng.choice((1, 2, 2, 3))
        stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))
        words.add(stem + rng.choice(_SUFFIXES))
    return sorted(words, key=lambda w: (len(w), w))


LEXICON = _lexicon()


def _rare(rng: random.Random) -> str:
    return LEXICON[int(len(LEXICON) * rng.random() ** 2.5)]
SPAM = ("Click here for the best deals!!! ", "BUY NOW limited offer ", "you wont believe this ",
        "subscribe subscribe subscribe ", "lol ")
AXIS_PHRASES = {
    "writing_style": ("The prose is garbled and repetitive.", "The writing is hard to follow.",
                      "The writing is plain but readable.", "The writing is clear.",
                      "The writing is clear, varied and well organized."),
    "expertise": ("It shows no understanding of the subject.", "It reflects only a shallow grasp of the topic.",
                  "It needs general background knowledge.", "It draws on solid domain knowledge.",
                  "It reflects deep expertise."),
    "educational_value": ("A reader learns nothing from it.", "It teaches little.",
                          "It offers some useful facts.", "It explains ideas a learner can reuse.",
                          "It is an excellent teaching text with worked examples."),
    "factual_accuracy": ("Several statements, including its arithmetic, are wrong.", "It contains factual errors.",
                         "Most claims seem plausible but are unsupported.", "Its facts and arithmetic are correct.",
                         "It is accurate and dense with verifiable facts."),
    "efficiency": ("Most of it is filler or spam.", "It is padded and repeats itself.",
                   "It is somewhat wordy.", "It is concise.", "Every sentence carries information."),
}
AXES = tuple(AXIS_PHRASES)


def _sentence(rng: random.Random, topic: str, quality: int) -> str:
    nouns = TOPICS[topic][0].split()
    people = TOPICS[topic][1].split()
    kind = rng.random()
    if kind < 0.15:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        product = a * b if quality >= 3 else a * b + rng.choice((-2, -1, 1, 2))
        return f"If each {rng.choice(nouns)} needs {a} units and there are {b} of them, the total is {product} units."
    if kind < 0.35:
        return (f"{rng.choice(CONNECTIVES)} the {rng.choice(ADJECTIVES)} {rng.choice(nouns)} "
                f"{rng.choice(VERBS)} the {_rare(rng)} {rng.choice(nouns)} that {rng.choice(people)} call "
                f"{_rare(rng)}.")
    if kind < 0.55:
        return (f"Many {rng.choice(people)} argue that a {rng.choice(ADJECTIVES)} {rng.choice(nouns)} "
                f"{rng.choice(VERBS)} every {rng.choice(nouns)} in {rng.randint(1700, 2024)}.")
    if kind < 0.75:
        return (f"The {rng.choice(nouns)} {rng.choice(VERBS)} how the {_rare(rng)} {rng.choice(nouns)} "
                f"behaves, so the {rng.choice(ADJECTIVES)} {_rare(rng)} matters.")
    adjective = rng.choice(ADJECTIVES)
    article = "An" if adjective[0] in "aeiou" else "A"
    return (f"{article} {adjective} {rng.choice(nouns)} is the {_rare(rng)} of the {rng.choice(nouns)} "
            f"that {rng.choice(VERBS)} its {_rare(rng)} and {_rare(rng)}.")


def _damage(rng: random.Random, sentence: str, quality: int) -> str:
    if quality >= 3:
        return sentence
    words = sentence.split()
    if rng.random() < 0.5:  # typo: swap two letters of a word
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    text = " ".join(words)
    if quality == 1 and rng.random() < 0.4:
        text = rng.choice(SPAM) + text.lower()
    return text


def document_text(rng: random.Random, topic: str, quality: int, n_words: int) -> str:
    """An English-like document of about ``n_words`` words on ``topic`` at latent ``quality``."""
    paragraphs, words = [], 0
    title = f"{rng.choice(ADJECTIVES).capitalize()} {rng.choice(TOPICS[topic][0].split())}s: notes on {topic}"
    while words < n_words:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            s = _damage(rng, _sentence(rng, topic, quality), quality)
            sentences.append(s)
            if quality <= 2 and rng.random() < 0.3:
                sentences.append(s)  # repetition
        paragraph = " ".join(sentences)
        words += paragraph.count(" ") + 1
        paragraphs.append(paragraph)
    return title + "\n\n" + "\n\n".join(paragraphs)


def annotation(rng: random.Random, quality: int) -> dict:
    """A valid ``ixt`` block consistent with the document's latent quality."""
    scores = {axis: min(5, max(1, quality + rng.choice((-1, 0, 0, 0, 1)))) for axis in AXES}
    parts = [AXIS_PHRASES[axis][scores[axis] - 1] for axis in rng.sample(AXES, 3)]
    return {"status": "ok", "quality": quality, "scores": scores, "critique": " ".join(parts),
            "reasoning": None if rng.random() < 0.5 else f"Scored the axes, then the overall {quality}.",
            "annotator": {"backend": "synthetic", "model": "make_corpus", "prompt_version": "v1"}}


def generate_records(n_docs: int, seed: int = 0, annotated: float = 0.6, failed: float = 0.1,
                     words: tuple = (80, 400)) -> list[dict]:
    """``n_docs`` records: a share ``annotated`` with a valid ``ixt`` block, ``failed`` with a failure
    status, the rest without ``ixt``. Document length is uniform in ``words`` (min, max)."""
    rng = random.Random(seed)
    records = []
    for i in range(n_docs):
        topic = rng.choice(sorted(TOPICS))
        quality = rng.choices((1, 2, 3, 4, 5), weights=(1, 2, 3, 2, 1))[0]
        record = {"id": f"doc-{seed}-{i:06d}", "text": document_text(rng, topic, quality, rng.randint(*words)),
                  "source": topic}
        u = rng.random()
        if u < annotated:
            record["ixt"] = annotation(rng, quality)
        elif u < annotated + failed:
            record["ixt"] = {"status": rng.choice(("failed:parse", "failed:length", "failed:http")),
                             "annotator": {"backend": "synthetic", "model": "make_corpus", "prompt_version": "v1"}}
        records.append(record)
    return records


def write_jsonl(path: str, records: list) -> None:
    """Write records (dicts, or raw strings written verbatim as lines) one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
            f.write("\n")


def tokenizer_training_texts(records: list) -> list:
    """Document texts plus the rendered default prefixes (so that the model covers their characters)."""
    from megatron_ixt.data.prefix_kinds import names, steering_annotation
    from megatron_ixt.data.record import parse_annotation
    from megatron_ixt.data.templates import load_template

    templates = [load_template(kind) for kind in names()]
    annotations = [steering_annotation()] + [parse_annotation(r["ixt"])[0] for r in records if "ixt" in r]
    return [r["text"] for r in records] + [t.render(a) for a in annotations if a is not None for t in templates]


def train_sentencepiece(texts, model_prefix: str, vocab_size: int, max_sentences: int = 300000,
                        byte_fallback: bool = False) -> str:
    """Train a SentencePiece BPE model (unk=0, bos=1, eos=2; with ``byte_fallback``, unknown
    characters become <0xNN> byte pieces, as in Llama 2) on ``texts``; returns ``<model_prefix>.model``.

    Documents are split into lines/sentences first (SentencePiece skips over-long sentences).
    """
    import io

    import sentencepiece

    sentences = [s for text in texts for line in text.split("\n") for s in line.split(". ") if s.strip()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=(model := io.BytesIO()), vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, hard_vocab_limit=False, byte_fallback=byte_fallback, num_threads=1,
        minloglevel=2)
    with open(model_prefix + ".model", "wb") as f:
        f.write(model.getvalue())
    return model_prefix + ".model"


def train_hf_bpe(texts, directory: str, vocab_size: int) -> str:
    """Train a HuggingFace byte-level BPE tokenizer (GPT-2/Llama-3 style; specials <unk>, <s>, </s>,
    EOS "</s>") with ``tokenizers`` on ``texts``; saves it (tokenizer.json and its transformers config)
    to ``directory`` and returns that."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--annotated", type=float, default=0.6)
    parser.add_argument("--failed", type=float, default=0.1)
    parser.add_argument("--output", required=True)
    parser.add_argument("--tokenizer-prefix", default=None,
                        help="also train a SentencePiece BPE model on the corpus: <prefix>.model")
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()
    records = generate_records(args.docs, args.seed, args.annotated, args.failed)
    write_jsonl(args.output, records)
    if args.tokenizer_prefix:
        train_sentencepiece(tokenizer_training_texts(records), args.tokenizer_prefix, args.vocab_size)


if __name__ == "__main__":
    main()
