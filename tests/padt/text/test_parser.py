"""parse_answer on well-formed OVD/REC/RIC answers and on malformed model output (never raises)."""

from __future__ import annotations

import re

import pytest
import torch

from padt.text.parser import MAX_PHRASE_WORDS, parse_answer

V = 1000  # text ids are UTF-8 byte values; ids >= V are VRTs
EOS = 999


def decode_bytes(run: list[int]) -> str:
    return bytes(run).decode("utf-8", errors="replace")


def enc(text: str, eos: bool = True) -> list[int]:
    """Byte ids for text, V + k for each <|VRT_k|>, then EOS."""
    ids: list[int] = []
    for piece in re.split(r"(<\|VRT_\d+\|>)", text):
        match = re.fullmatch(r"<\|VRT_(\d+)\|>", piece)
        ids += [V + int(match.group(1))] if match else list(piece.encode("utf-8"))
    return ids + ([EOS] if eos else [])


def parse(ids, require_labels: bool = True, eos_ids=(EOS,)):
    return parse_answer(ids, vrt_id_start=V, decode_text=decode_bytes, eos_ids=eos_ids, require_labels=require_labels)


def test_ovd_answer():
    text = 'In this image, there are 2 "person" (<|VRT_3|><|VRT_4|>, <|VRT_10|>), 1 "dog" (<|VRT_7|>).'
    ids = enc(text)
    out = parse(ids)
    assert out.text == text and not out.problems and not out.truncated
    assert [(o.label, o.patches) for o in out.objects] == [("person", [3, 4]), ("person", [10]), ("dog", [7])]
    for obj in out.objects:
        assert [ids[p] - V for p in obj.positions] == obj.patches
        assert out.text[obj.label_span[0] : obj.label_span[1]] == obj.label


def test_rec_answer_keeps_repeated_patches():
    out = parse(enc('The "the red circle" refers to <|VRT_3|><|VRT_4|><|VRT_4|> in this image.'))
    assert not out.problems
    assert [(o.label, o.patches) for o in out.objects] == [("the red circle", [3, 4, 4])]


def test_no_objects_answer():
    out = parse(enc("No objects from the list are present in the image."))
    assert out.objects == [] and out.problems == [] and not out.truncated


def test_ric_labels_are_the_phrase_before_the_parenthesis():
    text = "A man (<|VRT_1|>) is riding a horse (<|VRT_2|>), next to two dogs (<|VRT_3|>, <|VRT_4|>). A cat <|VRT_5|>."
    out = parse(enc(text), require_labels=False)
    assert not out.problems
    labels = [o.label for o in out.objects]
    assert labels == ["A man", "is riding a horse", "next to two dogs", "next to two dogs", "A cat"]
    assert all(out.text[o.label_span[0] : o.label_span[1]] == o.label for o in out.objects)


def test_ric_phrase_is_capped_and_quotes_are_plain_text():
    words = [f"w{i}" for i in range(12)]
    out = parse(enc('A sign reads "STOP" near ' + " ".join(words) + " (<|VRT_0|>)."), require_labels=False)
    assert out.objects[0].label == " ".join(words[-MAX_PHRASE_WORDS:])
    assert out.problems == []


def test_multibyte_labels_survive_token_boundaries():
    out = parse(enc('The "café 北京 🙂" refers to <|VRT_2|> in this image.'))
    assert out.objects[0].label == "café 北京 🙂" and not out.problems


def test_escaped_quotes_inside_a_label():
    out = parse(enc('The "the \\"big\\" dog" refers to <|VRT_9|> in this image.'))
    obj = out.objects[0]
    assert obj.label == 'the "big" dog' and not out.problems
    assert out.text[obj.label_span[0] : obj.label_span[1]] == 'the \\"big\\" dog'


def test_cut_off_inside_an_object_drops_it():
    out = parse(enc('The "cat" refers to <|VRT_1|><|VRT_2|>', eos=False))
    assert out.truncated and out.objects == []
    assert any("cut off" in p for p in out.problems) and any("dropped" in p for p in out.problems)


def test_cut_off_inside_the_parentheses_of_the_last_object_drops_it():
    out = parse(enc('There are 2 "cat" (<|VRT_1|>, <|VRT_5|>), 1 "dog" (<|VRT_7|>, ', eos=False))
    assert out.truncated
    assert [(o.label, o.patches) for o in out.objects] == [("cat", [1]), ("cat", [5])]


def test_cut_off_in_an_open_quote_keeps_the_complete_objects():
    out = parse(enc('In this image, there are 1 "cat" (<|VRT_1|>), 1 "do', eos=False))
    assert out.truncated and [o.patches for o in out.objects] == [[1]]
    assert not any("dropped" in p for p in out.problems)


def test_vrts_without_a_label_are_dropped_and_reported():
    out = parse(enc("Here <|VRT_1|> is the answer."))
    assert out.objects == [] and any("no quoted label" in p for p in out.problems)
    # the same answer is fine where labels are not required
    assert [o.patches for o in parse(enc("Here <|VRT_1|> is it."), require_labels=False).objects] == [[1]]


@pytest.mark.parametrize(
    "text",
    ['The "cat" refers to in this image.', 'In this image, there are 2 "person" (), 1 "dog" (<|VRT_3|>).'],
)
def test_label_announcing_vrts_without_any_is_reported(text):
    out = parse(enc(text))
    assert any(p.startswith('label "') and "has no VRTs" in p for p in out.problems)
    assert not out.truncated


def test_quoted_words_that_announce_nothing_are_not_problems():
    out = parse(enc('The word "hello" is written on it; the "cat" (<|VRT_2|>) sits.'))
    assert out.problems == [] and [o.label for o in out.objects] == ["cat"]


def test_stray_quotes_are_reported():
    out = parse(enc('The "cat refers to <|VRT_1|> in this image.'))
    assert out.objects == []
    assert any("unclosed quote" in p for p in out.problems)
    assert any("unbalanced quote" in p for p in out.problems)
    late = parse(enc('The "cat" refers to <|VRT_1|> in this "image.'))
    assert [o.label for o in late.objects] == ["cat"] and any("unbalanced quote" in p for p in late.problems)


def test_empty_answer_and_only_eos():
    empty = parse([])
    assert empty.text == "" and empty.objects == [] and empty.truncated
    assert parse([], eos_ids=()).problems == []  # without eos ids the ids are taken as complete
    only_eos = parse([EOS])
    assert only_eos.text == "" and only_eos.objects == [] and only_eos.problems == [] and not only_eos.truncated


def test_tokens_after_eos_are_ignored_and_garbage_never_raises():
    out = parse(enc('The "a" refers to <|VRT_1|>.') + [V + 5, ord("x"), -3])
    assert [o.patches for o in out.objects] == [[1]] and out.text.endswith(".")

    def failing(run):
        raise ValueError("bad token")

    garbage = [-1, V + 3, ord('"'), ord('"'), V, ord(")"), ord("("), V + 2]
    result = parse_answer(garbage, vrt_id_start=V, decode_text=failing, eos_ids=(EOS,))
    assert result.truncated and any("could not be decoded" in p for p in result.problems)
    ric = parse(garbage, require_labels=False)
    assert [o.patches for o in ric.objects] == [[3], [0]] and any("unbalanced ')'" in p for p in ric.problems)
    labelled = parse(garbage)
    assert labelled.objects == [] and any("empty quoted label" in p for p in labelled.problems)



def test_tensor_ids_and_one_completion_at_a_time():
    ids = enc('The "x" refers to <|VRT_4|>.')
    assert [o.patches for o in parse(torch.tensor(ids)).objects] == [[4]]
    with pytest.raises(ValueError, match="one completion"):
        parse(torch.tensor([ids, ids]))
