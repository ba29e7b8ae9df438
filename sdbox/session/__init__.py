"""Sessions: hardened RDP (FreeRDP 3) and SPICE (remote-viewer) launchers."""
