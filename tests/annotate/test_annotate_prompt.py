"""Prompt templates (versioned, rubric first) and head+tail truncation with a real tokenizer."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from annotate.prompt import DEFAULT_TEMPLATE, PLACEHOLDER, ChatFormatter, PromptTemplate, TokenCounter


def test_default_template_rubric_first_document_last():
    t = PromptTemplate.load(DEFAULT_TEMPLATE)
    assert t.version.startswith("rubric_v1@") and len(t.sha256) == 64
    a, b = t.render("DOC ONE"), t.render("DOC TWO")
    assert a.startswith(t.prefix) and b.startswith(t.prefix)
    assert len(t.prefix) > 0.8 * (len(t.text) - len(PLACEHOLDER))  # the shared part dominates
    for axis in ("writing_style", "expertise", "educational_value", "factual_accuracy", "efficiency", "quality"):
        assert axis in t.prefix


def test_template_version_tracks_content(tmp_path):
    p = tmp_path / "mine_v2.txt"
    p.write_text("Rate it.\n" + PLACEHOLDER + "\n")
    v1 = PromptTemplate.load(str(p)).version
    p.write_text("Rate it carefully.\n" + PLACEHOLDER + "\n")
    v2 = PromptTemplate.load(str(p)).version
    assert v1.startswith("mine_v2@") and v1 != v2
    p.write_text("no placeholder here")
    with pytest.raises(ValueError, match="exactly once"):
        PromptTemplate.load(str(p))


def test_estimated_truncation_keeps_head_and_tail():
    c = TokenCounter(None)
    text = "H" * 4000 + "M" * 40000 + "T" * 4000
    cut, info = c.truncate(text, 3000)
    assert cut.startswith("H" * 4000) and cut.endswith("T" * 4000)
    assert "omitted" in cut and info["original"] == 12000 and info["kept_head"] + info["kept_tail"] <= 3000
    assert c.truncate("short text", 3000) == ("short text", None)


@pytest.fixture(scope="module")
def judge_tokenizer_dir(tmp_path_factory):
    """A real (tiny, trained here) byte-level BPE tokenizer saved as a Hugging Face tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"the quick brown fox jumps over the lazy dog {i}" for i in range(200)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
    d = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(str(d))
    return str(d)


def test_token_truncation_with_real_tokenizer(judge_tokenizer_dir):
    c = TokenCounter(judge_tokenizer_dir)
    words = [f"w{i}" for i in range(3000)]
    text = " ".join(words)
    n = c.count(text)
    cut, info = c.truncate(text, 300)
    assert info["unit"] == "tokens" and info["original"] == n
    assert info["kept_head"] == 200 and info["kept_tail"] == 100
    head, tail = cut.split("[...")[0], cut.split("omitted ...]")[1]
    assert c.count(head) <= 200 + 2 and c.count(tail) <= 100 + 2
    assert head.startswith("w0 w1 w2 ") and tail.rstrip().endswith("w2998 w2999") and " w1500 " not in cut


def test_chat_formatter_applies_template(judge_tokenizer_dir):
    c = TokenCounter(judge_tokenizer_dir)
    f = ChatFormatter(c.hf_tokenizer)
    assert f("rate this") == "<|user|>rate this<|assistant|>"
    assert ChatFormatter(None)("rate this") == "rate this"
