"""A link between two network namespaces that adds a fixed delay: netem in user space.

``tc netem`` is what the issue asks for, but this machine's kernel has no
``sch_netem`` (``tc qdisc add ... netem`` answers "Specified qdisc kind is
unknown", and there are no modules to load). So the box's outer link is made
of two TAP devices, one in each namespace, and this process carries every
Ethernet frame from one to the other after ``--one-way-ms``: ARP, IKE and
ESP-in-UDP alike, in order, both ways. A link taken down (``ip link set eth0
down``) drops what is written to it, as a cut cable would.

Run by :func:`delayed_link` (``python -m tests.integration.delay_link``),
never in the test process: a busy benchmark process would add its own jitter.
It prints ``ready`` once both devices are attached.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import heapq
import os
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
FRAME_MAX = 65536
_REPO = Path(__file__).resolve().parents[2]


def enter_netns(name: str) -> None:
    """Move the calling thread into the named network namespace (`ip netns` names)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")
    finally:
        os.close(fd)


def attach_tap(netns: str, device: str) -> int:
    """An fd on the persistent TAP ``device`` of ``netns`` (frames without a packet header)."""
    enter_netns(netns)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", device.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def relay(left: int, right: int, one_way_s: float) -> None:
    """Carry frames both ways, each ``one_way_s`` after it was read; until SIGTERM."""
    peer = {left: right, right: left}
    selector = selectors.DefaultSelector()
    for fd in peer:
        selector.register(fd, selectors.EVENT_READ)
    due: list[tuple[float, int, int, bytes]] = []  # (when, sequence, to fd, frame)
    sequence = 0
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        for key, _ in selector.select(timeout):
            fd = int(key.fd)  # the registered int itself
            with contextlib.suppress(BlockingIOError):
                while True:
                    frame = os.read(fd, FRAME_MAX)
                    sequence += 1
                    heapq.heappush(due, (time.monotonic() + one_way_s, sequence, peer[fd], frame))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, out, frame = heapq.heappop(due)
            # a device that is down (a cut link) or full loses the frame, as a wire would
            with contextlib.suppress(OSError):
                os.write(out, frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one-way-ms", type=float, required=True)
    parser.add_argument("left_netns")
    parser.add_argument("left_device")
    parser.add_argument("right_netns")
    parser.add_argument("right_device")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    left = attach_tap(args.left_netns, args.left_device)
    right = attach_tap(args.right_netns, args.right_device)
    print("ready", flush=True)
    relay(left, right, args.one_way_ms / 1000.0)


@contextlib.contextmanager
def delayed_link(left: tuple[str, str], right: tuple[str, str],
                 rtt_ms: float) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """TAP ``left`` = (netns, device) and ``right`` joined with ``rtt_ms`` round trip.

    The devices are created here (down, no address); the caller configures them.
    """
    for netns, device in (left, right):
        subprocess.run(["ip", "-n", netns, "tuntap", "add", "dev", device, "mode", "tap"],
                       check=True, capture_output=True, timeout=10)  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.delay_link", "--one-way-ms", str(rtt_ms / 2),
         *left, *right],
        cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            _, err = process.communicate(timeout=10)
            raise RuntimeError(f"the delaying link did not start: {err.decode(errors='replace')}")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


if __name__ == "__main__":
    main()
