"""The agent's part of the box at a researcher's desk: outer network settings and the support record.

Mixed into :class:`sdbox.agent.machine.Agent` (as the connection flow is),
so that the machine stays about cards and sessions. The tunnel's state is a
hook (:attr:`DeskMixin.tunnel_state`): a callable that returns the tunnel's
latest :class:`~sdbox.network.events.TunnelEvent`, or None where the agent
does not run the tunnel; by default the machine's own ``tunnel`` port.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sdbox.agent import diagnostics
from sdbox.agent.api import DiagnosticsOutcome, NetworkStatus, Problem
from sdbox.agent.events import AgentEvent, NetworkChanged
from sdbox.agent.outer_network import LinkFacts, NetworkStore, diagnose, read_link
from sdbox.agent.problems import Refusal
from sdbox.agent.support import SupportRecord
from sdbox.network.events import TunnelEvent, TunnelPort
from sdbox.network.outer import NetworkSettingsError

_log = logging.getLogger("sdbox.agent")

# The outer link is looked at (two `ip` calls) at most this often: the greeter reads every
# property every few seconds, and the picker's idle wake-ups are measured (make bench).
LINK_TTL_S = 5.0


class DeskMixin:
    """Outer network settings, where the network stands, and the support screen's facts."""

    network: NetworkStore
    support: SupportRecord
    tunnel: TunnelPort | None  # the machine's (CentreLink's); None: no tunnel on this site
    tunnel_state: Callable[[], TunnelEvent | None]
    read_link: Callable[[str], LinkFacts]
    _link: tuple[float, LinkFacts] | None
    fleet_config: Path | None  # the box's fleet configuration (None: not on this box)
    _sending: bool

    def _desk_init(
        self,
        network: NetworkStore | None,
        support: SupportRecord | None,
        tunnel_state: Callable[[], TunnelEvent | None] | None,
        link_reader: Callable[[str], LinkFacts] | None = None,
        fleet_config: Path | None = None,
    ) -> None:
        self.network = network or NetworkStore(None, None)
        self.support = support or SupportRecord()
        self.tunnel_state = tunnel_state or self._followed_tunnel
        self.read_link = link_reader or read_link
        self._link = None
        self.fleet_config = fleet_config
        self._sending = False

    def _followed_tunnel(self) -> TunnelEvent | None:
        """The tunnel the machine follows (``Agent(tunnel=...)``; None: no tunnel, the link alone)."""
        return self.tunnel.current() if self.tunnel is not None else None

    def _emit(self, event: AgentEvent) -> None:  # the machine's
        raise NotImplementedError

    def set_network(self, values: Mapping[str, str]) -> None:
        """The outer network from the greeter: checked against the site, kept, or refused."""
        try:
            settings = self.network.set(values)
        except NetworkSettingsError as exc:
            # "FIELD CODE: words": the greeter marks the field and says the code (api.NetworkRefusal)
            raise Refusal(
                Problem.INVALID_NETWORK, f"{exc.field.value} {exc.why.value}: {exc.message}"
            ) from exc
        self._link = None
        self._emit(NetworkChanged(settings.public()))

    def link(self) -> LinkFacts:
        """The outer interface, looked at again when the last look is older than LINK_TTL_S."""
        now = time.monotonic()
        if self._link is None or now - self._link[0] > LINK_TTL_S:
            self._link = (now, self.read_link(self.network.link_interface()))
        return self._link[1]

    def network_status(self) -> NetworkStatus:
        """Where the outer network and the tunnel stand."""
        return diagnose(self.link(), self.tunnel_state())

    def support_values(self) -> dict[str, str]:
        """What the support screen shows (D-Bus ``Support``)."""
        link = self.link()
        return self.support.values(
            self.network.link_interface(), link.addresses, diagnose(link, self.tunnel_state())
        )

    async def send_diagnostics(self) -> diagnostics.DiagnosticsResult:
        """The support screen's "send diagnostics": one upload at a time, off the agent's loop."""
        if self.fleet_config is None:
            return diagnostics.DiagnosticsResult(
                DiagnosticsOutcome.NOT_CONFIGURED, "this box does not report to a fleet service"
            )
        if self._sending:
            return diagnostics.DiagnosticsResult(DiagnosticsOutcome.BUSY, "an upload is under way")
        self._sending = True
        try:
            return await asyncio.to_thread(diagnostics.send, self.fleet_config)
        finally:
            self._sending = False
