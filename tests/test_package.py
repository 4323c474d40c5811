"""Package hygiene: what `import sigprop` costs and exposes."""

from __future__ import annotations

import subprocess
import sys

import sigprop


def test_import_needs_only_torch_and_numpy() -> None:
    code = ("import sys, sigprop; print(sorted(m for m in ('scipy', 'pandas', 'matplotlib', "
            "'seaborn', 'typer', 'rich', 'torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_plotting_and_the_figure_set_import_matplotlib_only_to_draw() -> None:
    code = ("import sys, sigprop.plotting, sigprop.paper; print(sorted(m for m in ('pandas', "
            "'matplotlib', 'seaborn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_public_names_are_exported() -> None:
    assert {"measure", "find_blocks", "Trace", "ResidualAdd", "models"} <= set(sigprop.__all__)
    assert all(hasattr(sigprop, name) for name in sigprop.__all__)
