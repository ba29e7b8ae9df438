"""Whether the fingerprint sensor is plugged in, as the state machine needs it.

Fed by the hotplug watcher (:mod:`sdbox.agent.sensors`, udev) on the loop;
read by the machine's finger prompt, which waits on :meth:`changed` instead
of asking again and again. Without a watcher (emulated, file or no sensor)
the state is ``unwatched`` and the sensor is taken to be there.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from sdbox.agent.api import SensorState
from sdbox.audit import AuditEvent, audit

# how long after a failed capture a udev removal still counts as the cause (the
# capture's USB error and the kernel's uevent race each other)
UNPLUG_GRACE_S = 2.0


class SensorHotplug(Protocol):
    """A sensor plugged in or out (sdbox.agent.sensors.SensorEvent)."""

    @property
    def present(self) -> bool: ...
    @property
    def device(self) -> str: ...
    @property
    def usb_id(self) -> str: ...
    @property
    def driver(self) -> str: ...


class SensorPresence:
    """The set of plugged-in sensors, and a wake-up for whoever waits on a change."""

    def __init__(self) -> None:
        self.watched = False
        self._devices: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def state(self) -> SensorState:
        """connected | disconnected | unwatched."""
        if not self.watched:
            return SensorState.UNWATCHED
        return SensorState.CONNECTED if self._devices else SensorState.DISCONNECTED

    @property
    def connected(self) -> bool:
        """True unless a watched sensor is known to be absent."""
        return self.state is not SensorState.DISCONNECTED

    def watching(self) -> None:
        """The watcher started (before it reports the sensors already there)."""
        if not self.watched:
            self.watched = True
            self._wake()

    def update(self, event: SensorHotplug) -> bool:
        """Apply a hotplug event; True when connected/disconnected flipped."""
        before = self.state
        if event.present:
            self._devices.add(event.device)
        else:
            self._devices.discard(event.device)
        audit(
            AuditEvent.SENSOR_CONNECTED if event.present else AuditEvent.SENSOR_DISCONNECTED,
            "fingerprint sensor plugged in" if event.present else "fingerprint sensor unplugged",
            sensor=event.usb_id, driver=event.driver or None,
        )  # fmt: skip
        if self.state is before:
            return False
        self._wake()
        return True

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Return at the next connected/disconnected flip."""
        await self._changed.wait()

    async def gone_soon(self) -> bool:
        """After a failed capture: did the watcher report the sensor gone (or does it now)?"""
        if not self.watched:
            return False
        if not self.connected:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed(), UNPLUG_GRACE_S)
        return not self.connected
