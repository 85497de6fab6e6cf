"""Token-level parser of PaDT answers: which runs of visual reference tokens form objects, and their labels.

Works on **local** completion ids (prompt removed; ids ``>= vrt_id_start`` are VRTs, ``id - vrt_id_start`` is
the patch index on the sample's merged grid). Rules (PADT_REFERENCE §2, with the flaws of §8 item 6 fixed):

* The completion ends at the first end-of-sequence id; without one it was cut off (``truncated``).
* Each **maximal run of consecutive VRT ids** is one object (the official format writes an object's VRTs back
  to back and separates objects with ", ").
* ``require_labels=True`` (OVD, REC): the text between a pair of ``"`` is the current label (``\\"`` and ``\\\\``
  are escapes inside it); each object takes the current label. VRTs with no label yet, or inside an unclosed
  quote, are dropped and reported.
* ``require_labels=False`` (RIC): an object's label is the phrase right before the ``(`` that opens its group
  (or before the VRTs themselves when they are not in parentheses), back to the previous punctuation mark
  (``.,;:!?()"`` or a newline) or VRT, keeping at most :data:`MAX_PHRASE_WORDS` words. It is a plain heuristic,
  not noun-phrase chunking: in ``A man is riding a horse (...)`` the label is ``A man is riding a horse``.
* Malformed output never raises; it becomes ``problems`` (human-readable strings) and, where an object cannot be
  trusted, a dropped object:

  - cut off (no eos) while inside a VRT run, or inside the still-open parenthesis of the last object: the last
    object is dropped (it may be incomplete). Cut off inside an open quote drops nothing (the label being written
    has no VRTs yet); the answer is marked ``truncated`` in every cut-off case;
  - a quoted label directly followed by ``refers to`` or ``(`` (REC/OVD grammar) but then no VRT run;
  - a quote or parenthesis left open at the end of a finished answer.

Hidden states: ``ParsedObject.positions`` are indices in the completion. With ``generate(output_hidden_states=True)``
the last-layer state of step ``p`` is the one that *predicted* token ``p`` (PaDT's decoder input).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

#: RIC labels keep at most this many words before the parenthesis.
MAX_PHRASE_WORDS = 8
_PHRASE_DELIMITERS = set('.,;:!?()"\n<>')  # "<" / ">" bound rendered <|VRT_k|> tokens
_EXPECTS_VRTS = re.compile(r"\s*(?:refers to\b|\()")


@dataclass
class ParsedObject:
    """One object of an answer.

    Attributes:
        label: the quoted label (unescaped) or, for RIC, the phrase before it; "" when none.
        patches: local VRT indices in order of appearance (repeats kept).
        positions: index in the completion of each of those VRT tokens.
        label_span: (start, end) character span of the label in ``ParsedAnswer.text`` (raw text between the
            quotes, escapes included), or ``None``.
    """

    label: str
    patches: list[int]
    positions: list[int]
    label_span: tuple[int, int] | None = None


@dataclass
class ParsedAnswer:
    """A parsed completion: ``text`` renders VRTs as ``<|VRT_k|>``; ``truncated`` means no end-of-sequence id."""

    text: str
    objects: list[ParsedObject] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False


def _to_ints(ids) -> list[int]:
    values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if values and isinstance(values[0], list):
        raise ValueError("parse_answer takes one completion (1-D ids); use parse_batch for a batch")
    return [int(v) for v in values]


def _phrase_before(text: str, end: int) -> tuple[str, tuple[int, int] | None]:
    """RIC label: the words before ``end`` back to the previous delimiter, at most MAX_PHRASE_WORDS of them."""
    start = end
    while start > 0 and text[start - 1] not in _PHRASE_DELIMITERS:
        start -= 1
    words = list(re.finditer(r"\S+", text[start:end]))[-MAX_PHRASE_WORDS:]
    if not words:
        return "", None
    span = (start + words[0].start(), start + words[-1].end())
    return text[span[0] : span[1]], span


def parse_answer(
    ids,
    *,
    vrt_id_start: int,
    decode_text: Callable[[list[int]], str],
    eos_ids: Iterable[int] = (),
    require_labels: bool = True,
) -> ParsedAnswer:
    """Parse one completion (1-D local ids, prompt removed). Never raises on malformed model output.

    Args:
        ids: completion ids (list, tuple, 1-D tensor or array).
        vrt_id_start: V; ids ``>= V`` are VRTs with patch index ``id - V``.
        decode_text: turns a run of text ids into text (e.g. ``tokenizer.decode``); called once per run.
        eos_ids: ids that end the answer (``<|im_end|>``, ``<|endoftext|>``). When empty, ``ids`` is taken to be
            complete (the caller already cut it), so nothing counts as truncated.
        require_labels: True for OVD/REC (quoted labels), False for RIC (phrase labels).
    """
    values = _to_ints(ids)
    eos = set(int(e) for e in eos_ids)
    problems: list[str] = []
    end = next((i for i, token in enumerate(values) if token in eos), None)
    truncated = bool(eos) and end is None
    if end is not None:
        values = values[:end]

    # 1) Render: decode each maximal text run at once (multi-byte characters survive), VRTs as <|VRT_k|>.
    pieces: list[str] = []
    runs: list[tuple[int, list[int], list[int]]] = []  # (char offset in text, patches, positions)
    cursor = 0
    position = 0
    for is_vrt, group in groupby(values, key=lambda token: token >= vrt_id_start):
        tokens = list(group)
        if is_vrt:
            patches = [token - vrt_id_start for token in tokens]
            runs.append((cursor, patches, list(range(position, position + len(tokens)))))
            piece = "".join(f"<|VRT_{k}|>" for k in patches)
        else:
            valid = [token for token in tokens if token >= 0]
            if len(valid) != len(tokens):
                problems.append(f"negative token ids near position {position} were ignored")
            try:
                piece = decode_text(valid) if valid else ""
            except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
                problems.append(f"tokens {position}..{position + len(tokens) - 1} could not be decoded: {error}")
                piece = ""
        pieces.append(piece)
        cursor += len(piece)
        position += len(tokens)
    text = "".join(pieces)

    # 2) Walk the text once, visiting each VRT run at its offset.
    objects: list[ParsedObject] = []
    label: str | None = None
    label_span: tuple[int, int] | None = None
    in_quote, escaped, quote_start, buffer = False, False, -1, []
    expecting: str | None = None  # a label that announced VRTs ("refers to" / "(") and has none yet
    open_parens: list[int] = []
    last_object_paren: int | None = None  # char index of the "(" enclosing the last object, if still open
    run_index = 0
    for index in range(len(text) + 1):
        while run_index < len(runs) and runs[run_index][0] == index:
            _, patches, positions = runs[run_index]
            run_index += 1
            where = f"VRTs at completion positions {positions[0]}..{positions[-1]}"
            if require_labels and in_quote:
                problems.append(f"{where} are inside an unclosed quote (opened at char {quote_start}); dropped")
                continue
            if require_labels:
                if label is None:
                    problems.append(f"{where} have no quoted label before them; dropped")
                    continue
                objects.append(ParsedObject(label, patches, positions, label_span))
                expecting = None
            else:
                anchor = open_parens[-1] if open_parens else index
                phrase, span = _phrase_before(text, anchor)
                objects.append(ParsedObject(phrase, patches, positions, span))
            last_object_paren = open_parens[-1] if open_parens else None
        if index == len(text):
            break
        char = text[index]
        if require_labels and in_quote:
            if escaped:
                buffer.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quote, label, label_span = False, "".join(buffer), (quote_start + 1, index)
                if not label.strip():  # "" names nothing: the VRTs after it have no label
                    problems.append(f"empty quoted label at char {quote_start}")
                    label, label_span = None, None
                elif _EXPECTS_VRTS.match(text, index + 1):
                    expecting = label
            else:
                buffer.append(char)
            continue
        if require_labels and char == '"':
            if expecting is not None:
                problems.append(f'label "{expecting}" has no VRTs')
                expecting = None
            in_quote, escaped, quote_start, buffer = True, False, index, []
        elif char == "(":
            open_parens.append(index)
        elif char == ")":
            if open_parens:
                closed = open_parens.pop()
                if closed == last_object_paren:
                    last_object_paren = None
            else:
                problems.append(f"unbalanced ')' at char {index}")

    # 3) How the answer ended.
    if truncated:
        problems.append(f"answer cut off: no end-of-sequence token after {len(values)} tokens")
        ends_in_vrt = bool(values) and values[-1] >= vrt_id_start
        inside_group = last_object_paren is not None and last_object_paren in open_parens
        if objects and (ends_in_vrt or inside_group):
            dropped = objects.pop()
            problems.append(
                f'last object ("{dropped.label}", patches {dropped.patches}) dropped: cut off inside '
                + ("its VRTs" if ends_in_vrt else "its parentheses")
            )
    else:
        if require_labels and in_quote:
            problems.append(f"unbalanced quote: the quote opened at char {quote_start} is never closed")
        if expecting is not None:
            problems.append(f'label "{expecting}" has no VRTs')
        if open_parens:
            problems.append(f"unbalanced '(' at char {open_parens[-1]}")
    return ParsedAnswer(text=text, objects=objects, problems=problems, truncated=truncated)


def parse_batch(
    sequences,
    *,
    vrt_id_start: int,
    decode_text: Callable[[list[int]], str],
    eos_ids: Iterable[int] = (),
    require_labels: bool | Sequence[bool] = True,
) -> list[ParsedAnswer]:
    """:func:`parse_answer` for each row of ``sequences`` ([B, T] tensor, or a list of 1-D id sequences).

    ``require_labels`` may be one flag or one per row (batches that mix OVD/REC with RIC). Padding after the
    end-of-sequence id is ignored; rows must not carry left padding (slice the prompt off first).
    """
    rows = list(sequences)
    flags = [require_labels] * len(rows) if isinstance(require_labels, bool) else list(require_labels)
    if len(flags) != len(rows):
        raise ValueError(f"require_labels has {len(flags)} entries for {len(rows)} sequences")
    eos = tuple(eos_ids)
    return [
        parse_answer(row, vrt_id_start=vrt_id_start, decode_text=decode_text, eos_ids=eos, require_labels=flag)
        for row, flag in zip(rows, flags)
    ]
