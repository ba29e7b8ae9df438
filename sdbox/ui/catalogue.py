"""The greeter's languages: one gettext catalogue per language under ``sdbox/ui/locale``.

English is the source language (the msgids); every other language is one
``locale/<code>/LC_MESSAGES/sdbox.po`` and its compiled ``.mo`` (``make
locale``). Adding a language is adding that file: the greeter offers every
language it finds here, and ``tests/unit/test_ui_catalogue.py`` holds each
one to every text the greeter can show (docs/greeter.md, "Languages").
"""

from __future__ import annotations

import gettext
from collections.abc import Callable
from importlib import resources
from pathlib import Path

DOMAIN = "sdbox"
SOURCE_LANGUAGE = "en"


def locale_dir() -> Path:
    """Where the catalogues are (inside the package, so that a checkout runs as installed)."""
    return Path(str(resources.files("sdbox.ui").joinpath("locale")))


def languages() -> tuple[str, ...]:
    """The languages the greeter can speak: English and every compiled catalogue."""
    found = sorted(
        path.parent.parent.name for path in locale_dir().glob(f"*/LC_MESSAGES/{DOMAIN}.mo")
    )
    return (SOURCE_LANGUAGE, *found)


def translator(language: str) -> Callable[[str], str]:
    """gettext for ``language``; English (the msgids themselves) for a language it lacks."""
    return gettext.translation(
        DOMAIN, localedir=str(locale_dir()), languages=[language], fallback=True
    ).gettext
