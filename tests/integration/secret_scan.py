"""Looking for secrets where the box could leave them: files, processes, core dumps.

Every secret is searched in each form a leak could take (:func:`encodings`);
the places are gathered as ``{where: bytes}`` haystacks and searched by
:func:`find`, which returns what it found rather than asserting, so that the
negative controls can show the same search does find a leak.
"""

from __future__ import annotations

import base64
import contextlib
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

Secrets = dict[str, list[bytes]]
"""What must not leak, by name: every value in every form of :func:`encodings`."""


def encodings(secret: bytes) -> list[bytes]:
    """The forms a leaked secret could take.

    Raw; hex (both cases, bare or with ``:``/space separators); base64
    (standard and URL-safe, at each of the three alignments a secret can have
    inside a longer encoded blob); UTF-16LE of the text forms.
    """
    texts = [secret.hex(), secret.hex().upper()]
    for sep in (":", " "):
        texts += [sep.join(f"{b:02x}" for b in secret), sep.join(f"{b:02X}" for b in secret)]
    forms = [secret, *(t.encode() for t in texts)]
    for shift in range(3):  # inside a longer base64 blob the secret starts at offset 0, 1 or 2
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(bytes(shift) + secret)
            # keep the characters whose 6 bits all come from the secret
            first, end = -(-8 * shift // 6), 8 * (shift + len(secret)) // 6
            forms.append(encoded[first:end])
    with contextlib.suppress(UnicodeDecodeError):
        texts.append(secret.decode())
    forms += [t.encode("utf-16-le") for t in texts]
    return [f for f in forms if len(f) >= 6]


@dataclass(frozen=True)
class Finding:
    """A secret (by name) found in a place."""

    secret: str
    where: str


def find(secrets: Secrets, haystacks: dict[str, bytes]) -> list[Finding]:
    """Every (secret, place) where some form of the secret occurs."""
    found: list[Finding] = []
    for name, values in secrets.items():
        forms = [form for value in values for form in encodings(value)]
        for where, data in haystacks.items():
            if any(form in data for form in forms):
                found.append(Finding(name, where))
    return found


def snapshot(directory: Path, into: dict[str, bytes], skip: tuple[Path, ...] = ()) -> None:
    """Every readable file under ``directory`` (not following links), by path."""
    if not directory.exists():
        return
    for path in directory.rglob("*"):
        if path.is_symlink() or not path.is_file() or any(path.is_relative_to(x) for x in skip):
            continue
        with contextlib.suppress(OSError):
            into[str(path)] = path.read_bytes()


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children first), as /proc shows them now."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop(0)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                children = (task / "children").read_text().split()
                found += [int(c) for c in children]
                todo += [int(c) for c in children]
    return found


def process_texts(pid: int, label: str) -> dict[str, bytes]:
    """A process's command line and environment, as haystacks."""
    out: dict[str, bytes] = {}
    for part in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            out[f"{label} {part} (pid {pid})"] = Path(f"/proc/{pid}/{part}").read_bytes()
    return out


_MAPPING = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")


def process_memory(pid: int) -> bytes:
    """The writable memory of a running process (heap, stacks, anonymous and data mappings).

    Code and read-only file mappings are left out: what a process was told
    or computed lives in what it can write. Needs CAP_SYS_PTRACE for another
    user's process (the tests run as root).
    """
    chunks: list[bytes] = []
    maps = Path(f"/proc/{pid}/maps").read_bytes().splitlines()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            match = _MAPPING.match(line)
            if match is None:
                continue
            start, end, perms, name = match.groups()
            if not perms.startswith(b"rw") or name in (b"[vvar]", b"[vsyscall]"):
                continue
            with contextlib.suppress(OSError, ValueError):
                mem.seek(int(start, 16))
                chunks.append(_without_zero_pages(mem.read(int(end, 16) - int(start, 16))))
    return b"\x00".join(chunks)


_PAGE = 4096
_ZERO_PAGE = bytes(_PAGE)
_ZERO_GAP = bytes(64)  # stands for a run of zero pages: a secret ending in zeros still matches


def _without_zero_pages(region: bytes) -> bytes:
    # Most of a GTK process's writable memory is untouched zero pages; they
    # hold nothing, and searching them is most of the time a scan would take.
    kept: list[bytes] = []
    for offset in range(0, len(region), _PAGE):
        page = region[offset : offset + _PAGE]
        if page != _ZERO_PAGE:
            kept.append(page)
        elif not kept or kept[-1] is not _ZERO_GAP:
            kept.append(_ZERO_GAP)
    return b"".join(kept)


def core_limit(pid: int) -> tuple[str, str]:
    """The (soft, hard) core file size limit of a running process, as /proc shows it."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            return soft, hard
    raise AssertionError(f"no core limit in /proc/{pid}/limits")


COREDUMP_STORE = Path("/var/lib/systemd/coredump")


@dataclass(frozen=True)
class DumpPlaces:
    """Where the kernel's ``core_pattern`` puts the dump of a process working in a directory."""

    pattern: str
    directories: tuple[Path, ...]
    name_glob: str
    observable: bool  # False: a pipe to a program whose output the test cannot read

    @classmethod
    def for_cwd(cls, cwd: Path) -> DumpPlaces:
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
        if pattern.startswith("|"):
            if "systemd-coredump" in pattern:
                return cls(pattern, (COREDUMP_STORE,), "core.*", True)
            return cls(pattern, (), "", False)
        target = Path(pattern) if pattern.startswith("/") else cwd / pattern
        # any % specifier (pid, time, executable...) may be any text; core_uses_pid adds .PID
        name = re.sub(r"%.", "*", target.name) + "*"
        return cls(pattern, (target.parent,), name, True)

    def dumps(self) -> dict[str, bytes]:
        """The dumps there now (decompressed where systemd-coredump compressed them)."""
        found: dict[str, bytes] = {}
        for directory in self.directories:
            if not directory.is_dir():
                continue
            for path in directory.glob(self.name_glob):
                if path.is_file() and not path.is_symlink():
                    with contextlib.suppress(OSError):
                        found[str(path)] = _decompressed(path)
        return found


def _decompressed(path: Path) -> bytes:
    tools = {".zst": "zstd", ".lz4": "lz4", ".xz": "xz"}
    tool = tools.get(path.suffix)
    if tool is None or shutil.which(tool) is None:
        return path.read_bytes()
    return subprocess.run(
        [tool, "-dc", str(path)], capture_output=True, check=True, timeout=120
    ).stdout


def wait_until_dead(pid: int, timeout: float = 30.0) -> None:
    """Wait until ``pid`` is a zombie or gone: the kernel has written any dump by then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not die")


def holder_of(secret: bytes, workdir: Path, *, may_dump: bool) -> subprocess.Popen[bytes]:
    """A stand-in client that reads ``secret`` on stdin, as a session client does, in ``workdir``.

    Returned once it holds the secret. With ``may_dump`` its core limit is
    lifted, which is what a negative control of the dump check needs.
    """
    program = (
        "import sys, time; s = sys.stdin.buffer.read(); print('ok', flush=True); time.sleep(99)"
    )
    process = subprocess.Popen(
        ["/usr/bin/python3", "-I", "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=workdir, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    value = resource.RLIM_INFINITY if may_dump else 0
    resource.prlimit(process.pid, resource.RLIMIT_CORE, (value, value))
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(secret)
    process.stdin.close()
    assert process.stdout.readline() == b"ok\n"
    process.stdout.close()
    return process
