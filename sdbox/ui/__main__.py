"""``python3 -m sdbox.ui [--bus ADDRESS] [--lang fr|en]``: the kiosk greeter."""

from __future__ import annotations

import argparse
import os
import sys

from sdbox.ui.app import run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="sdbox.ui", description="The sdbox kiosk greeter (GTK 4)."
    )
    parser.add_argument("--bus", help="D-Bus address of the agent (default: the system bus)")
    parser.add_argument("--lang", choices=["en", "fr"], default=os.environ.get("SDBOX_LANG", "en"))
    args = parser.parse_args()
    return run(args.bus, args.lang)


if __name__ == "__main__":
    sys.exit(main())
