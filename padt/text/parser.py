"""Token-level parser of PaDT answers: which runs of visual reference tokens form objects, and their labels.

Works on **local** completion ids (prompt removed; ids ``>= vrt_id_start`` are VRTs, ``id - vrt_id_start`` is
the patch index on the sample's merged grid). Rules (the official answer format; unlike the official parser,
escaped quotes in labels are handled and malformed output is reported instead of silently yielding nothing):

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
from collections.abc import Callable, Iterable
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
        box: for answer formats that write boxes as text (:mod:`padt.text.answer_formats`), the box read from
            it as (x1, y1, x2, y2) in original-image pixels; ``None`` for VRT objects, which the decoder boxes.
    """

    label: str
    patches: list[int]
    positions: list[int]
    label_span: tuple[int, int] | None = None
    box: tuple[float, float, float, float] | None = None


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
        raise ValueError("parse_answer takes one completion (1-D ids); call it once per row of a batch")
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


@dataclass
class _VrtRun:
    """A maximal run of consecutive VRT ids: where it sits in the rendered text, and what it names."""

    offset: int  # char offset in the rendered text
    patches: list[int]  # local VRT indices
    positions: list[int]  # index in the completion of each VRT


def _cut_at_eos(values: list[int], eos_ids: Iterable[int]) -> tuple[list[int], bool]:
    """The ids before the first end-of-sequence id, and whether there was none (cut off) although eos ids exist."""
    eos = set(int(e) for e in eos_ids)
    end = next((i for i, token in enumerate(values) if token in eos), None)
    truncated = bool(eos) and end is None
    return (values[:end] if end is not None else values), truncated


def _render(
    values: list[int], vrt_id_start: int, decode_text: Callable[[list[int]], str], problems: list[str]
) -> tuple[str, list[_VrtRun]]:
    """Decode each maximal text run at once (multi-byte characters survive) and render VRTs as ``<|VRT_k|>``."""
    pieces: list[str] = []
    runs: list[_VrtRun] = []
    cursor = 0
    position = 0
    for is_vrt, group in groupby(values, key=lambda token: token >= vrt_id_start):
        tokens = list(group)
        if is_vrt:
            patches = [token - vrt_id_start for token in tokens]
            runs.append(_VrtRun(cursor, patches, list(range(position, position + len(tokens)))))
            piece = "".join(f"<|VRT_{k}|>" for k in patches)
        else:
            piece = _decode_run(tokens, position, decode_text, problems)
        pieces.append(piece)
        cursor += len(piece)
        position += len(tokens)
    return "".join(pieces), runs


def _decode_run(tokens: list[int], position: int, decode_text: Callable[[list[int]], str], problems: list[str]) -> str:
    """One text run's text; negative ids are skipped and a failing ``decode_text`` gives "" (both reported)."""
    valid = [token for token in tokens if token >= 0]
    if len(valid) != len(tokens):
        problems.append(f"negative token ids near position {position} were ignored")
    try:
        return decode_text(valid) if valid else ""
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
        problems.append(f"tokens {position}..{position + len(tokens) - 1} could not be decoded: {error}")
        return ""


@dataclass
class _Walk:
    """The state of one pass over the rendered text: current label, open quote and parentheses, objects so far."""

    text: str
    require_labels: bool
    problems: list[str]
    objects: list[ParsedObject] = field(default_factory=list)
    label: str | None = None
    label_span: tuple[int, int] | None = None
    in_quote: bool = False
    escaped: bool = False
    quote_start: int = -1
    buffer: list[str] = field(default_factory=list)
    expecting: str | None = None  # a label that announced VRTs ("refers to" / "(") and has none yet
    open_parens: list[int] = field(default_factory=list)
    last_object_paren: int | None = None  # char index of the "(" enclosing the last object, if still open

    def run(self, runs: list[_VrtRun]) -> None:
        """Walk the text once, visiting each VRT run at its offset (before the character there)."""
        run_index = 0
        for index in range(len(self.text) + 1):
            while run_index < len(runs) and runs[run_index].offset == index:
                self.take_run(runs[run_index], index)
                run_index += 1
            if index == len(self.text):
                break
            if self.require_labels and self.in_quote:
                self.quoted_char(index)
            else:
                self.plain_char(index)

    def take_run(self, run: _VrtRun, index: int) -> None:
        """Make the VRT run at char ``index`` an object with the current label, or drop and report it."""
        where = f"VRTs at completion positions {run.positions[0]}..{run.positions[-1]}"
        if self.require_labels and self.in_quote:
            self.problems.append(f"{where} are inside an unclosed quote (opened at char {self.quote_start}); dropped")
            return
        if self.require_labels:
            if self.label is None:
                self.problems.append(f"{where} have no quoted label before them; dropped")
                return
            self.objects.append(ParsedObject(self.label, run.patches, run.positions, self.label_span))
            self.expecting = None
        else:
            anchor = self.open_parens[-1] if self.open_parens else index
            phrase, span = _phrase_before(self.text, anchor)
            self.objects.append(ParsedObject(phrase, run.patches, run.positions, span))
        self.last_object_paren = self.open_parens[-1] if self.open_parens else None

    def quoted_char(self, index: int) -> None:
        """A character inside a quoted label: an escape, the closing quote, or part of the label."""
        char = self.text[index]
        if self.escaped:
            self.buffer.append(char)
            self.escaped = False
        elif char == "\\":
            self.escaped = True
        elif char == '"':
            self.in_quote, self.label, self.label_span = False, "".join(self.buffer), (self.quote_start + 1, index)
            if not self.label.strip():  # "" names nothing: the VRTs after it have no label
                self.problems.append(f"empty quoted label at char {self.quote_start}")
                self.label, self.label_span = None, None
            elif _EXPECTS_VRTS.match(self.text, index + 1):
                self.expecting = self.label
        else:
            self.buffer.append(char)

    def plain_char(self, index: int) -> None:
        """A character outside quoted labels: an opening quote (labels required) or a parenthesis count."""
        char = self.text[index]
        if self.require_labels and char == '"':
            if self.expecting is not None:
                self.problems.append(f'label "{self.expecting}" has no VRTs')
                self.expecting = None
            self.in_quote, self.escaped, self.quote_start, self.buffer = True, False, index, []
        elif char == "(":
            self.open_parens.append(index)
        elif char == ")":
            if self.open_parens:
                closed = self.open_parens.pop()
                if closed == self.last_object_paren:
                    self.last_object_paren = None
            else:
                self.problems.append(f"unbalanced ')' at char {index}")


def _check_ending(walk: _Walk, values: list[int], vrt_id_start: int, truncated: bool) -> None:
    """How the answer ended: a cut-off answer may lose its last object; a finished one must close what it opened."""
    problems, objects = walk.problems, walk.objects
    if truncated:
        problems.append(f"answer cut off: no end-of-sequence token after {len(values)} tokens")
        ends_in_vrt = bool(values) and values[-1] >= vrt_id_start
        inside_group = walk.last_object_paren is not None and walk.last_object_paren in walk.open_parens
        if objects and (ends_in_vrt or inside_group):
            dropped = objects.pop()
            problems.append(
                f'last object ("{dropped.label}", patches {dropped.patches}) dropped: cut off inside '
                + ("its VRTs" if ends_in_vrt else "its parentheses")
            )
        return
    if walk.require_labels and walk.in_quote:
        problems.append(f"unbalanced quote: the quote opened at char {walk.quote_start} is never closed")
    if walk.expecting is not None:
        problems.append(f'label "{walk.expecting}" has no VRTs')
    if walk.open_parens:
        problems.append(f"unbalanced '(' at char {walk.open_parens[-1]}")


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
    values, truncated = _cut_at_eos(_to_ints(ids), eos_ids)
    problems: list[str] = []
    text, runs = _render(values, vrt_id_start, decode_text, problems)
    walk = _Walk(text, require_labels, problems)
    walk.run(runs)
    _check_ending(walk, values, vrt_id_start, truncated)
    return ParsedAnswer(text=text, objects=walk.objects, problems=problems, truncated=truncated)
