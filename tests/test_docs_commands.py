"""The commands the documentation shows still exist: every option of every ``linblur …`` command in the README and
``docs/`` (code blocks and inline code) is an option of that sub-command, every whole command in a code block parses,
and every ``python docs/… / benchmarks/…`` script named exists and defines the options given to it.

A renamed or removed option would otherwise leave a recipe (a model card's retraining command, a results page's
evaluation) that fails only when a reader types it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from napari_linblur.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)  # a fenced block: language, text
SHELLS = {"", "bash", "sh", "shell", "console"}
SHELL_STOP = {"|", "||", "&&", ";", "&"}


def _page_texts() -> list[tuple[str, str, bool]]:
    """(page, text, whole) for every fenced block (whole commands) and every inline code span (often a fragment)."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        name = str(page.relative_to(ROOT))
        for language, block in FENCE.findall(text):
            if language in SHELLS:
                out.append((name, re.sub(r"\\\n\s*", " ", block), True))
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", FENCE.sub("", text)):
            out.append((name, span, False))
    return out


def _expand(block: str) -> str:
    """Expand the block's own ``NAME="…"`` shell variables (``$C`` in a recipe)."""
    for name, value in re.findall(r"^\s*([A-Z_]+)=\"([^\"]*)\"\s*$", block, re.M):
        block = block.replace(f"${name}", value).replace(f"${{{name}}}", value)
    return block


def _tokens(line: str) -> list[str]:
    try:
        toks = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in prose: split on spaces
        toks = line.split()
    out = []
    for tok in toks:
        if tok in SHELL_STOP or tok.startswith((">", "2>")):
            break
        out.append(tok)
    return out


def _commands(prefix: str) -> list[tuple[str, list[str], bool]]:
    """(page, tokens after ``prefix``, whole) for every command starting with ``prefix`` on the pages."""
    found = []
    for page, text, whole in _page_texts():
        if whole:
            text = _expand(text)
        for line in text.splitlines():
            for match in re.finditer(rf"(?:^|\$ |&& |; |\| |\( )\s*{re.escape(prefix)}\s(.*)", line.strip()):
                found.append((page, _tokens(match.group(1)), whole))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """The options of a parser; for a group (``linblur train …``), those of any of its members."""
    known = set(parser._option_string_actions)
    for member in _subparsers(parser).values():
        known |= _options(member)
    return known


def _resolve(tokens: list[str]) -> tuple[argparse.ArgumentParser, str, list[str]]:
    """The (sub-)parser a command reaches, its name, and the tokens after the sub-command names."""
    parser, name = build_parser(), "linblur"
    while tokens and tokens[0] in _subparsers(parser):
        parser, name = _subparsers(parser)[tokens[0]], f"{name} {tokens[0]}"
        tokens = tokens[1:]
    return parser, name, tokens


def _parse_problem(tokens: list[str]) -> str | None:
    """argparse's error for ``linblur TOKENS`` (its last line), or None when the command parses."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(tokens)
    except SystemExit as exit_:
        if exit_.code:
            return err.getvalue().strip().splitlines()[-1]
    return None


LINBLUR = _commands("linblur")
SCRIPTS = _commands("python")


def test_the_pages_show_linblur_commands_and_scripts():
    assert sum(whole for *_, whole in LINBLUR) > 30 and len(LINBLUR) > 100
    assert len(SCRIPTS) > 30


@pytest.mark.parametrize("page", sorted({page for page, *_ in LINBLUR}))
def test_every_option_shown_exists(page):
    wrong = []
    for where, tokens, _ in LINBLUR:
        if where != page:
            continue
        parser, name, rest = _resolve(tokens)
        known = _options(parser)
        for tok in rest:
            option = tok.split("=", 1)[0]
            if re.fullmatch(r"--[a-z][a-z0-9-]*", option) and option not in known:
                wrong.append(f"{name} {option}")
    assert not wrong, f"{page} shows options that do not exist: {sorted(set(wrong))}"


@pytest.mark.parametrize("page", sorted({page for page, _, whole in LINBLUR if whole}))
def test_every_whole_command_in_a_code_block_parses(page):
    failed = []
    for where, tokens, whole in LINBLUR:
        if where != page or not whole or "..." in tokens or "…" in " ".join(tokens):
            continue
        problem = _parse_problem(tokens)
        if problem:
            failed.append(f"linblur {' '.join(tokens)[:120]}: {problem}")
    assert not failed, f"{page}: commands that do not parse:\n" + "\n".join(failed)


def test_every_script_shown_exists_and_takes_the_options_given():
    wrong = []
    for page, tokens, _ in SCRIPTS:
        if not tokens or not tokens[0].endswith(".py") or "/" not in tokens[0]:
            continue  # python -m …, or a bare file name in prose
        script = ROOT / tokens[0]
        if not script.is_file():
            wrong.append(f"{page}: {tokens[0]} does not exist")
            continue
        source = script.read_text(encoding="utf-8")
        if "argparse" not in source:
            continue
        for tok in tokens[1:]:
            option = tok.split("=", 1)[0]
            if re.fullmatch(r"--[a-z][a-z0-9-]*", option) and f'"{option}"' not in source:
                wrong.append(f"{page}: {tokens[0]} has no option {option}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _card_commands() -> list[tuple[str, str, str]]:
    """(card, key path, command) for every ``linblur …`` command recorded in a shipped model card."""
    import json

    from napari_linblur.models.registry import WEIGHTS_DIR

    found = []

    def walk(node, where, card):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}", card)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]", card)
        elif isinstance(node, str) and re.match(r"^(\S*/)?linblur (train|evaluate|synth)\b", node):
            found.append((card, where, node))

    for path in sorted(Path(WEIGHTS_DIR).glob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")), "", path.name)
    return found


CARD_COMMANDS = _card_commands()


def test_every_command_a_model_card_records_parses_today():
    """A card's recipe (each leg, its evaluation, its data) can be typed again as recorded."""
    assert len({card for card, *_ in CARD_COMMANDS}) == 3 and len(CARD_COMMANDS) > 20
    failed = []
    for card, where, command in CARD_COMMANDS:
        problem = _parse_problem(_tokens(command)[1:])
        if problem:
            failed.append(f"{card}{where}: {problem}")
    assert not failed, "\n".join(failed)


def test_the_command_line_reference_is_what_the_code_prints():
    """docs/cli.md holds every command's --help (every option the command line takes, documented): regenerated with
    `python docs/cli_reference.py` whenever an option changes."""
    import re
    import sys

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import cli_reference
    finally:
        sys.path.pop(0)
    made_with = re.search(r"with Python (\d+\.\d+)", (ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))
    if made_with is None or made_with.group(1) != cli_reference.PYTHON:
        pytest.skip(f"docs/cli.md was made with another Python (argparse's layout differs): {made_with}")
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == cli_reference.render(), (
        "docs/cli.md is out of date: run python docs/cli_reference.py")
