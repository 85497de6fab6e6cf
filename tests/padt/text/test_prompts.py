"""Prompt and answer templates: exact strings of the official data, rendering and validation."""

from __future__ import annotations

import pytest

from padt.text import prompts


def test_rec_prompt_and_answer_are_the_official_strings():
    assert prompts.rec_prompt("the red circle") == (
        'Please carefully check the image and detect the object this sentence describes: "the red circle".'
    )
    assert prompts.rec_answer_template("the red circle") == 'The "the red circle" refers to <|Obj_0|> in this image.'


def test_rec_escapes_quotes_and_backslashes_in_the_expression():
    assert prompts.rec_answer_template('the "big" dog') == 'The "the \\"big\\" dog" refers to <|Obj_0|> in this image.'
    assert prompts.rec_prompt("a\\b").endswith('describes: "a\\\\b".')


def test_ovd_prompt_is_a_json_list():
    assert prompts.ovd_prompt(["person", "traffic light"]) == (
        'Please carefully check the image and detect the following objects: ["person", "traffic light"].'
    )
    assert prompts.ovd_prompt(["café"]).endswith('["café"].')  # written as is, not \u00e9


def test_ric_prompt():
    assert prompts.ric_prompt() == "Please describe this image."


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([], "No objects from the list are present in the image."),
        (["cat"], 'There is 1 "cat" (<|Obj_0|>) in this image.'),
        (["car"] * 3, 'There are 3 "car" (<|Obj_0|>, <|Obj_1|>, <|Obj_2|>) in this image.'),
        (
            ["person", "person", "dog"],
            'In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).',
        ),
        (["cat", "dog"], 'In this image, there are 1 "cat" (<|Obj_0|>), 1 "dog" (<|Obj_1|>).'),
    ],
)
def test_ovd_answer_template_matches_the_official_format(labels, expected):
    assert prompts.ovd_answer_template(labels) == expected


def test_render_answer_joins_an_objects_vrts_without_separator():
    template = 'In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).'
    rendered = prompts.render_answer(template, [[3, 4, 4], [10], [7, 8]])
    assert rendered == (
        'In this image, there are 2 "person" (<|VRT_3|><|VRT_4|><|VRT_4|>, <|VRT_10|>), 1 "dog" (<|VRT_7|><|VRT_8|>).'
    )
    assert [int(k) for k in prompts.VRT_PATTERN.findall(rendered)] == [3, 4, 4, 10, 7, 8]
    assert prompts.render_answer(prompts.NO_OBJECTS_ANSWER, []) == prompts.NO_OBJECTS_ANSWER


def test_vrt_token():
    assert prompts.vrt_token(0) == "<|VRT_0|>"
    assert prompts.vrt_token(1234) == "<|VRT_1234|>"
    with pytest.raises(ValueError, match="non-negative"):
        prompts.vrt_token(-1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: prompts.rec_prompt(""), "expression is empty"),
        (lambda: prompts.rec_answer_template("   "), "expression is empty"),
        (lambda: prompts.ovd_prompt([]), "category list is empty"),
        (lambda: prompts.ovd_prompt(['the "cat"']), "double quote"),
        (lambda: prompts.ovd_prompt(["cat", "cat"]), "repeated"),
        (lambda: prompts.ovd_prompt([" "]), "empty or blank"),
        (lambda: prompts.ovd_answer_template(["cat", "dog", "cat"]), "not contiguous"),
        (lambda: prompts.ovd_answer_template(['a"b']), "double quote"),
        (lambda: prompts.render_answer("<|Obj_2|>", [[1], [2]]), "only 2 objects"),
        (lambda: prompts.render_answer("<|Obj_0|>", [[]]), "no VRTs"),
    ],
)
def test_invalid_inputs_raise_value_errors_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_single_string_is_not_taken_as_a_category_list():
    with pytest.raises(TypeError):
        prompts.ovd_prompt("person")
