"""The audit trail: one event name per step, fixed fields (docs/agent.md lists them).

Shared by the agent, renewal (and the renewal timer) and the reference centre's
remote enrolment, below all of them. Never a
PIN, a template, a key or a credential in a field.
"""

from __future__ import annotations

import logging
from enum import StrEnum

_audit = logging.getLogger("sdbox.audit")


class AuditEvent(StrEnum):
    """The audit trail's events (docs/agent.md lists their fields)."""

    CARD_INSERTED = "card_inserted"
    CARD_REMOVED = "card_removed"
    CARD_SWAPPED = "card_swapped"
    DIRECTORY_VERIFIED = "directory_verified"
    DIRECTORY_REFUSED = "directory_refused"
    PROJECT_CHOSEN = "project_chosen"
    HOLDER_VERIFIED = "holder_verified"
    HOLDER_FAILED = "holder_failed"
    CREDENTIALS_VALIDATED = "credentials_validated"
    CREDENTIALS_REFUSED = "credentials_refused"
    CREDENTIAL_ISSUED = "credential_issued"
    SESSION_STARTED = "session_started"
    SESSION_ENDED = "session_ended"
    SWITCH = "switch"
    RENEWAL_DUE = "renewal_due"
    RENEWAL_STARTED = "renewal_started"
    RENEWAL_SUCCEEDED = "renewal_succeeded"
    RENEWAL_FAILED = "renewal_failed"
    SENSOR_CONNECTED = "sensor_connected"
    SENSOR_DISCONNECTED = "sensor_disconnected"
    AGENT_STARTED = "agent_started"
    AGENT_STOPPED = "agent_stopped"
    BOX_IDENTITY_CHECKED = "box_identity_checked"
    TUNNEL_UP = "tunnel_up"
    TUNNEL_DOWN = "tunnel_down"
    TUNNEL_REFUSED = "tunnel_refused"
    SESSION_RECONNECTING = "session_reconnecting"
    # remote biometric enrolment (docs/remote-enrolment.md), on the box and the centre
    ENROLMENT_OPENED = "enrolment_opened"
    ENROLMENT_AUTHORISED = "enrolment_authorised"
    ENROLMENT_CONFIRMED = "enrolment_confirmed"
    ENROLMENT_REFUSED = "enrolment_refused"
    ENROLMENT_REVOKED = "enrolment_revoked"
    ENROLMENT_WRITING = "enrolment_writing"
    ENROLMENT_WRITTEN = "enrolment_written"
    ENROLMENT_COMPLETED = "enrolment_completed"
    ENROLMENT_FAILED = "enrolment_failed"


def audit(event: AuditEvent, message: str, **fields: str | int | None) -> None:
    """Write one audit event (journal fields ``SDBOX_EVENT`` and ``SDBOX_<FIELD>``)."""
    extra = {"SDBOX_EVENT": event.value}
    for key, value in fields.items():
        if value is not None:
            extra[f"SDBOX_{key.upper()}"] = str(value)
    shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    _audit.info("%s: %s%s", event.value, message, f" ({shown})" if shown else "", extra=extra)
