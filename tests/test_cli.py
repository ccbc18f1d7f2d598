"""The command line as a whole: options every computing command shares."""

import argparse

from drifting.cli import build_parser


def _leaves(parser: argparse.ArgumentParser, name: str = ""):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name.strip(), parser
        return
    for n, child in subs[0].choices.items():
        yield from _leaves(child, f"{name} {n}")


def _has(parser: argparse.ArgumentParser, flag: str) -> bool:
    return any(flag in a.option_strings for a in parser._actions)


def test_every_command_takes_threads():
    """Every command computes with torch, so every one takes --threads (a shared CPU needs it); `policy`
    takes it before its sub-command."""
    top = build_parser()
    commands = dict(_leaves(top))
    assert len(commands) >= 18 and "train" in commands and "eval-classifier" in commands
    policy = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)][0].choices["policy"]
    missing = [n for n, p in commands.items()
               if not _has(p, "--threads") and not (n.startswith("policy") and _has(policy, "--threads"))]
    assert missing == []
