"""The box's way to the centre: site profile, IPsec tunnel, firewall.

- :mod:`sdbox.network.site`: the site profile written at flashing;
- :mod:`sdbox.network.strongswan`: the box's (and a reference gateway's)
  strongSwan configuration, generated from the profile and the box identity;
- :mod:`sdbox.network.events`: the tunnel's states, reasons and charon's
  alerts, and :class:`~sdbox.network.events.TunnelPort` for the agent;
- :mod:`sdbox.network.tunnel`: the tunnel driven and watched over VICI (the
  only module that imports ``vici``);
- :mod:`sdbox.network.firewall`: the box's nftables ruleset;
- :mod:`sdbox.network.crl_push`: the box's CRLs given to charon after a refresh.
"""
