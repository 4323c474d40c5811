"""The documentation stays true: CLI reference equals --help, and every Python example runs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import typer
from typer.testing import CliRunner

from sigprop_cli.main import app

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parent.parent
HELP_BLOCK = re.compile(r"```text\n\$ (sigprop[^\n]*) --help\n(.*?)```", re.S)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def help_text(command: str) -> str:
    args = [*command.split()[1:], "--help"]
    result = CliRunner().invoke(app, args, terminal_width=100)
    assert result.exit_code == 0
    return result.stdout


def command_paths() -> list[str]:
    """Every command and group of the CLI, e.g. ``sigprop analyze resnet``."""
    def walk(command: Any, path: str) -> list[str]:
        found = [path]
        if hasattr(command, "commands"):  # a group (Typer ships its own copy of Click)
            for name, sub in command.commands.items():
                found += walk(sub, f"{path} {name}")
        return found

    return walk(typer.main.get_command(app), "sigprop")


def test_cli_reference_matches_help() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    blocks = HELP_BLOCK.findall(doc)
    assert {command for command, _ in blocks} == set(command_paths()), (
        "docs/cli.md needs one `$ COMMAND --help` block per command")
    for command, text in blocks:
        assert text == help_text(command), (
            f"docs/cli.md is out of date for `{command} --help`; regenerate it with "
            "`python tests/test_docs.py`"
        )


PAGES = sorted(str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")]
               if PYTHON_BLOCK.search(p.read_text()))


def test_the_main_pages_have_examples() -> None:
    assert {"README.md", "docs/python-api.md", "docs/auditing.md",
            "docs/figures.md"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_python_examples_run(page: str, tmp_path: Path) -> None:
    examples = PYTHON_BLOCK.findall((ROOT / page).read_text())
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples write files such as stats.json
    try:
        for code in examples:
            exec(compile(code, f"{page} example", "exec"), {"__name__": "__doc_example__"})
    finally:
        os.chdir(cwd)


GALLERY = re.compile(r"(!\[[^\]]*\]\(\.\./figures/([a-z0-9-]+)\.png\)\n\n)\*([^\n]*)\*")


def _regenerate() -> None:
    """Rewrite docs/cli.md from --help and the captions of docs/figures.md from figures/."""
    path = ROOT / "docs" / "cli.md"
    doc = path.read_text()
    fresh = HELP_BLOCK.sub(
        lambda m: f"```text\n$ {m.group(1)} --help\n{help_text(m.group(1))}```", doc)
    path.write_text(fresh)
    gallery = ROOT / "docs" / "figures.md"
    gallery.write_text(GALLERY.sub(
        lambda m: f"{m.group(1)}*{(ROOT / 'figures' / f'{m.group(2)}.txt').read_text().strip()}*",
        gallery.read_text()))


if __name__ == "__main__":
    _regenerate()


def test_gallery_captions_match_the_generated_ones() -> None:
    gallery = (ROOT / "docs" / "figures.md").read_text()
    shown = [(m.group(2), m.group(3)) for m in GALLERY.finditer(gallery)]
    assert {name for name, _ in shown} == {p.stem for p in (ROOT / "figures").glob("*.png")}
    for name, caption in shown:
        assert caption == (ROOT / "figures" / f"{name}.txt").read_text().strip(), (
            f"{name}: regenerate docs/figures.md with `python tests/test_docs.py`")
