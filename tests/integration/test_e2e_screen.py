"""make image-e2e's screen reading: a greeter screen is recognised, a screen the greeter never drew is not."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.integration.greeter_env import REFERENCES, load


def _load_screen_module() -> Any:
    """bootimage/e2e_screen.py (a script beside the image tools, not a package module)."""
    path = Path(__file__).resolve().parents[2] / "bootimage" / "e2e_screen.py"
    spec = importlib.util.spec_from_file_location("e2e_screen", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["e2e_screen"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


e2e_screen = _load_screen_module()


def test_each_screen_is_its_own_reference_and_a_console_is_none() -> None:
    screens = e2e_screen.Screens(["insert-card", "picker", "place-finger", "wrong-finger"])
    for name in screens.references:
        seen = screens.classify(load(REFERENCES / f"{name}.png"))
        assert seen.shows(name), f"{name}: {seen}"
    # the kernel console's black screen with a cursor (what the first runs in the image showed)
    console = np.zeros((e2e_screen.SCREEN_H, e2e_screen.SCREEN_W, 3), dtype=np.uint8)
    console[10:12, 0:8] = 170
    seen = screens.classify(console)
    assert not any(seen.shows(name) for name in screens.references), str(seen)
