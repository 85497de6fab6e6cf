"""``padt train --help``: every flag has one line of help with its default, grouped by topic."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from padt.cli import build_parser, main
from padt.train.config import GROUPS, TrainConfig


def _train_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["train"]


def test_every_flag_has_help_with_its_default_in_a_topic_group(capsys) -> None:
    parser = _train_parser()
    flags = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    undocumented = [a.option_strings[0] for a in flags if not a.help or "(default: " not in a.help]
    assert undocumented == [], f"flags without help or default: {undocumented}"
    titles = [group.title for group in parser._action_groups]
    for wanted in ("data", "model", "optimisation", "VRT targets", "LoRA", "checkpoints", "evaluation"):
        assert any(wanted in title for title in titles), f"no argument group about {wanted!r}: {titles}"
    # Every setting but the YAML-only nested ones is a flag, in the group its metadata names.
    grouped = {a.dest: group.title for group in parser._action_groups for a in group._group_actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model_overrides":
            assert grouped[f.name] == GROUPS[f.metadata["group"]]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "LoRA:" in text and "learning rate (reached after the warm-up) (default: 2e-05)" in " ".join(text.split())
