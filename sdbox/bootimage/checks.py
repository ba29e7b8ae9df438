"""Security checks on a built image: world-writable files, listening sockets.

Pure functions on what the build and the boot test already have in hand: the
root tree mmdebstrap produced (`bootimage/build.py` refuses to seal a root
that fails) and what the running image printed on its serial console
(`bootimage/boot_test.py`). Unit tests: tests/unit/test_image_checks.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

# Where every user may write: sticky, and what they are for.
WORLD_WRITABLE_ALLOWED = ("tmp", "var/tmp")
# Not part of the image: kernel filesystems and tmpfs mounted at boot (the
# build excludes their contents from the squashfs), and /boot (in the UKI).
NOT_SHIPPED = ("proc", "sys", "dev", "run", "boot")

# Sockets a box may listen on: none of its own. DHCP's client ports appear only
# with a network card (systemd-networkd's client), IKE's (charon: UDP 500 and
# 4500, which also carries ESP) only with a site profile; the firewall admits
# nothing on them but the DHCP server's answers and the site's gateways.
ALLOWED_LISTENERS = frozenset({"udp:68", "udp6:546", "udp:500", "udp:4500", "udp6:500", "udp6:4500"})


def world_writable(root: Path) -> list[str]:
    """Paths under ``root`` (relative, sorted) that anyone may write, outside /tmp and /var/tmp.

    Symbolic links are not followed nor counted (their mode means nothing);
    a world-writable directory is reported once, with what it contains.
    """
    found: list[str] = []

    def allowed(rel: str) -> bool:
        return any(rel == a or rel.startswith(a + "/") for a in WORLD_WRITABLE_ALLOWED)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        if rel_dir == "":
            dirnames[:] = [d for d in dirnames if d not in NOT_SHIPPED]
        for name in [*dirnames, *filenames]:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if stat.S_ISLNK(mode) or not mode & stat.S_IWOTH:
                continue
            if not allowed(rel):
                found.append(rel)
    return sorted(found)


@dataclass(frozen=True, order=True)
class Listener:
    """One listening socket: ``proto`` is tcp, tcp6, udp or udp6."""

    proto: str
    address: str
    port: int
    process: str = ""

    @property
    def key(self) -> str:
        """``proto:port``, as ALLOWED_LISTENERS names them."""
        return f"{self.proto}:{self.port}"


_PROC_LISTEN_STATE = {"tcp": "0A", "tcp6": "0A", "udp": "07", "udp6": "07"}


def listeners_from_proc_net(tables: dict[str, str]) -> list[Listener]:
    """Listening sockets from the text of /proc/net/{tcp,tcp6,udp,udp6} (by table name)."""
    found: set[Listener] = set()
    for proto, text in tables.items():
        state = _PROC_LISTEN_STATE.get(proto)
        if state is None:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != state:
                continue
            address, port = fields[1].rsplit(":", 1)
            found.add(Listener(proto, _proc_address(address), int(port, 16)))
    return sorted(found)


def _proc_address(hexaddr: str) -> str:
    """/proc/net's address (host-order 32-bit words) in the usual notation."""
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return ".".join(str(b) for b in words)
    return str(ipaddress.IPv6Address(words))


def listeners_from_ss(text: str) -> list[Listener]:
    """Listening sockets from ``ss -H -tulpn`` (netid state recv-q send-q local peer [process])."""
    found: set[Listener] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] not in ("tcp", "udp"):
            continue
        local = fields[4]
        address, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        # [fe80::1]%eth0 or 0.0.0.0%lo: the interface is not part of the address
        address = address.split("%", 1)[0].strip("[]")
        family = "6" if ":" in address or address == "*" else ""  # ss writes [::] as *
        process = fields[6] if len(fields) > 6 else ""
        found.add(Listener(fields[0] + family, address, int(port), process))
    return sorted(found)


def unexpected_listeners(
    listeners: list[Listener], allowed: frozenset[str] = ALLOWED_LISTENERS
) -> list[Listener]:
    """The listeners not in ``allowed`` (``proto:port``), loopback ones included.

    A socket bound to loopback is still a service: a session client or any
    local process could reach it, so it must be stated like any other.
    """
    return [x for x in listeners if x.key not in allowed]


_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")


def module_name(path: Path) -> str:
    """A module's name as the kernel and modules.dep use it (``-`` and ``_`` are the same)."""
    return path.name.split(".ko", 1)[0].replace("-", "_")


def missing_module_dependencies(modules_dir: Path) -> dict[str, list[str]]:
    """Modules under ``modules_dir`` (one kernel's) whose dependencies are not there.

    The image leaves out whole module trees no box uses (dpkg path-exclude in
    bootimage/build.py); a kept module that needs a left-out one would fail to
    load on some box, with nothing said at build time. Each module's own
    ``.modinfo`` section lists what it needs (``depends=``, written when the
    kernel was built); a dependency is met by another module file or by the
    kernel itself (``modules.builtin``).
    """
    modules = {module_name(p): p for p in modules_dir.rglob("*.ko*") if p.is_file()}
    builtin_list = modules_dir / "modules.builtin"
    builtin = {
        module_name(Path(line.strip()))
        for line in (builtin_list.read_text().splitlines() if builtin_list.exists() else [])
        if line.strip()
    }
    missing: dict[str, list[str]] = {}
    for name, path in sorted(modules.items()):
        found = _DEPENDS.search(path.read_bytes())
        if found is None or not found.group(1):
            continue
        needs = [d.decode().replace("-", "_") for d in found.group(1).split(b",") if d]
        absent = [d for d in needs if d not in modules and d not in builtin]
        if absent:
            missing[name] = absent
    return missing


# ELF64 little-endian (x86-64): what the dynamic linker reads to load a program.
_ELF_MAGIC = b"\x7fELF\x02\x01"
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 15, 29
# where ld.so looks on Debian amd64 when no RPATH/RUNPATH names a library (besides ld.so.conf.d)
_DEFAULT_LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib",
                         "lib64", "usr/lib64")  # fmt: skip


@dataclass(frozen=True)
class DynamicLinks:
    """What one ELF file asks the dynamic linker for: libraries, and where else to look."""

    needed: tuple[str, ...]
    search_path: tuple[str, ...]


def dynamic_links(path: Path) -> DynamicLinks | None:
    """``DT_NEEDED`` and ``DT_RPATH``/``DT_RUNPATH`` of an ELF64 x86-64 file, or None.

    None for anything else: not ELF, another class, or no dynamic section (static
    programs, kernel modules). Only the program headers are read: the dynamic
    section and its string table are located through the loadable segments, as
    the dynamic linker does, so stripped files are read correctly.
    """
    try:
        with path.open("rb") as stream:
            head = stream.read(64)
            if len(head) < 64 or not head.startswith(_ELF_MAGIC):
                return None
            phoff = int.from_bytes(head[0x20:0x28], "little")
            phentsize = int.from_bytes(head[0x36:0x38], "little")
            phnum = int.from_bytes(head[0x38:0x3A], "little")
            if phentsize < 56 or phnum == 0:
                return None
            stream.seek(phoff)
            table = stream.read(phentsize * phnum)
            loads: list[tuple[int, int, int]] = []  # vaddr, filesz, offset
            dynamic: tuple[int, int] | None = None  # offset, size
            for i in range(phnum):
                entry = table[i * phentsize : i * phentsize + 56]
                if len(entry) < 56:
                    return None
                kind = int.from_bytes(entry[0:4], "little")
                offset = int.from_bytes(entry[8:16], "little")
                vaddr = int.from_bytes(entry[16:24], "little")
                filesz = int.from_bytes(entry[32:40], "little")
                if kind == _PT_LOAD:
                    loads.append((vaddr, filesz, offset))
                elif kind == _PT_DYNAMIC:
                    dynamic = (offset, filesz)
            if dynamic is None:
                return None
            stream.seek(dynamic[0])
            raw = stream.read(dynamic[1])
            entries: list[tuple[int, int]] = []
            for at in range(0, len(raw) - 15, 16):
                tag = int.from_bytes(raw[at : at + 8], "little", signed=True)
                if tag == _DT_NULL:
                    break
                entries.append((tag, int.from_bytes(raw[at + 8 : at + 16], "little")))
            strtab = next((value for tag, value in entries if tag == _DT_STRTAB), None)
            if strtab is None:
                return None
            base = next((off + strtab - va for va, size, off in loads if va <= strtab < va + size), None)
            if base is None:
                return None

            def string(index: int) -> str:
                stream.seek(base + index)
                data = stream.read(4096)
                return data.split(b"\x00", 1)[0].decode("utf-8", "replace")

            needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
            search = tuple(
                part for t, v in entries if t in (_DT_RPATH, _DT_RUNPATH)
                for part in string(v).split(":") if part
            )  # fmt: skip
            return DynamicLinks(needed, search)
    except OSError:
        return None


def _exists_in(root: Path, rel: str) -> bool:
    """Whether ``rel`` names something under ``root``, following symbolic links inside it."""
    current = rel.strip("/")
    for _ in range(16):
        candidate = root / current
        if not candidate.is_symlink():
            # a parent directory may itself be a link (/lib -> usr/lib): os resolves
            # those, which is right as long as they are relative (Debian's are)
            return candidate.exists()
        target = os.readlink(candidate)
        parent = os.path.dirname(current)
        current = os.path.normpath(target.lstrip("/") if target.startswith("/")
                                   else os.path.join(parent, target))  # fmt: skip
        if current.startswith(".."):
            return False
    return False


def _library_dirs(root: Path) -> list[str]:
    dirs = list(_DEFAULT_LIBRARY_DIRS)
    for conf in sorted((root / "etc/ld.so.conf.d").glob("*.conf")):
        for raw in conf.read_text(errors="replace").splitlines():
            line = raw.split("#", 1)[0].strip()
            if line and not line.startswith("include"):
                dirs.append(line.strip("/"))
    return dirs


def missing_shared_libraries(root: Path, skip: tuple[str, ...] = NOT_SHIPPED) -> dict[str, list[str]]:
    """ELF files under ``root`` (relative path) whose needed shared libraries are not there.

    The image leaves files of installed packages out (dpkg path-exclude in
    bootimage/build.py: Mesa's DRI drivers, LLVM, ...): a kept program or
    library that links to one would fail to start on the box, with nothing said
    at build time. A need is met by a file of that name in the object's own
    RPATH/RUNPATH (``$ORIGIN`` is its directory) or in the linker's default and
    ld.so.conf.d directories. Libraries only opened at run time (dlopen: DRI
    drivers, plugins) are not needs here: their users cope with their absence.
    """
    dirs = _library_dirs(root)
    # A library loaded by a program that names the library's directory in its own
    # RUNPATH (systemd's private libraries) finds its siblings there too, since they
    # are loaded already: the runpaths of all objects count for every one.
    runpaths: set[str] = set()
    unresolved: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        if rel_dir == "":
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            links = dynamic_links(path)
            if links is None or not links.needed:
                continue
            own = [p.replace("${ORIGIN}", "$ORIGIN").replace("$ORIGIN", "/" + rel_dir)
                   for p in links.search_path]  # fmt: skip
            runpaths.update(own)
            absent = [
                lib for lib in links.needed
                if "/" not in lib and not any(_exists_in(root, f"{d.strip('/')}/{lib}") for d in [*own, *dirs])
            ]  # fmt: skip
            if absent:
                unresolved[f"{rel_dir}/{name}" if rel_dir else name] = absent
    missing: dict[str, list[str]] = {}
    for rel, absent in sorted(unresolved.items()):
        still = [lib for lib in absent if not any(_exists_in(root, f"{d.strip('/')}/{lib}") for d in runpaths)]
        if still:
            missing[rel] = still
    return missing


# make image-e2e's test build only (bootimage/rootfs-e2e/): a production image has none of these
E2E_TEST_FILES = (
    "usr/lib/systemd/system/sdbox-e2e-relay.service",
    "usr/libexec/sdbox/e2e-relay",
    "etc/systemd/system/sdbox-agent.service.d/e2e-test.conf",
    "etc/systemd/system/sdbox-greeter.service.d/e2e-test.conf",
)
# where systemd takes unit files and drop-ins from (an environment set anywhere here reaches a unit)
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system.conf.d")
VIRTUAL_SENSOR = re.compile(r"FP_VIRTUAL_[A-Z_]*|FP_DEVICE_EMULATION")


def test_build_hooks(root: Path) -> list[str]:
    """What in a root could turn on libfprint's virtual devices or the e2e relay (empty: none).

    ``root`` holds at least the root's unit directories and /etc/sdbox
    (extracted from the image). libfprint enables its virtual_image,
    virtual_device and emulation drivers only from environment variables
    (FP_VIRTUAL_IMAGE, FP_VIRTUAL_DEVICE, ..., FP_DEVICE_EMULATION); on the box
    only units could set them.
    """
    found = [f"/{name}" for name in E2E_TEST_FILES if (root / name).exists() or (root / name).is_symlink()]
    for directory in (*UNIT_DIRS, "etc/sdbox", "etc/environment"):
        base = root / directory
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for match in sorted(set(VIRTUAL_SENSOR.findall(text))):
                found.append(f"/{path.relative_to(root)}: {match}")
    return found
