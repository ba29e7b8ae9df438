"""``python -m sdbox`` is the ``sdbox`` command."""

from sdbox._cli import main

main()
