"""sdbox's hardware-in-the-loop suite: the box's card scenarios on an emulated or a real reader.

Run it with ``sdbox hwtest`` (or ``python -m pytest hwtests`` from a
checkout); docs/hwtests.md says how and what each scenario measures. The
plugin (options, the bench, the card identity check, the timing report) is
:mod:`hwtests.plugin`; ``conftest.py`` only loads it.
"""
