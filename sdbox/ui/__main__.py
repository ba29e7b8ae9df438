"""``python3 -m sdbox.ui [--bus ADDRESS] [--lang en|fr|de|...]``: the kiosk greeter."""

from __future__ import annotations

import argparse
import os
import sys

from sdbox.ui.app import run
from sdbox.ui.catalogue import languages


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="sdbox.ui", description="The sdbox kiosk greeter (GTK 4)."
    )
    parser.add_argument("--bus", help="D-Bus address of the agent (default: the system bus)")
    parser.add_argument(
        "--lang", choices=languages(), default=os.environ.get("SDBOX_LANG", "en"),
        help="the greeter's language: English or any language with a catalogue",
    )  # fmt: skip
    args = parser.parse_args()
    return run(args.bus, args.lang)


if __name__ == "__main__":
    sys.exit(main())
