"""Logging conventions shared by every layer.

APDU traffic is logged at :data:`TRACE` (below DEBUG) and always through
:func:`redact`-ed hex, so that a PIN, template, key or credential never reaches
a log line even at the most verbose level.
"""

from __future__ import annotations

import logging

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
