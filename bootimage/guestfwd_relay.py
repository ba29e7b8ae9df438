"""QEMU guestfwd helper for the boot test: one guest connection, relayed to the host broker.

QEMU's user network runs it for each connection the guest opens to the
broker's address (``guestfwd=tcp:ADDR:PORT-cmd:...``), with that connection as
its standard input and output. It connects to 127.0.0.1:PORT, copies bytes
both ways until the broker closes, and appends one line to LOG per
connection (the test counts them). It never writes anything else: its
output is the guest's connection.

    python -I guestfwd_relay.py PORT LOG
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time

CHUNK = 65536


def relay(port: int) -> None:
    upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
    upstream.settimeout(None)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "guest")
    selector.register(upstream, selectors.EVENT_READ, "broker")
    while True:
        for key, _ in selector.select(timeout=300):
            if key.data == "guest":
                data = os.read(0, CHUNK)
                if data:
                    upstream.sendall(data)
                else:  # the guest is done sending: the broker answers, then closes
                    selector.unregister(0)
                    upstream.shutdown(socket.SHUT_WR)
                continue
            data = upstream.recv(CHUNK)
            if not data:  # the broker closed: so does the guest's side (on exit)
                return
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]


def main() -> int:
    port, log = int(sys.argv[1]), sys.argv[2]
    with open(log, "a") as out:
        out.write(f"{time.time():.3f} connection\n")
    try:
        relay(port)
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
