"""The image's security checks (bootimage/checks.py) on small trees and recorded outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sdbox.bootimage import checks
from sdbox.bootimage.checks import Listener


def tree(root: Path, entries: dict[str, int]) -> Path:
    """Files (or directories, names ending in /) with the given modes."""
    for rel, mode in entries.items():
        path = root / rel.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            path.mkdir(exist_ok=True)
        else:
            path.write_text("x")
        path.chmod(mode)
    return root


def test_a_clean_root_passes(tmp_path: Path) -> None:
    root = tree(tmp_path, {"etc/": 0o755, "etc/passwd": 0o644, "tmp/": 0o1777,
                           "var/tmp/": 0o1777, "var/tmp/left": 0o666})  # fmt: skip
    assert checks.world_writable(root) == []


def test_world_writable_files_and_directories_are_named(tmp_path: Path) -> None:
    root = tree(tmp_path, {"etc/sdbox/agent.toml": 0o646, "var/lib/sdbox/": 0o777,
                           "usr/bin/tool": 0o757, "usr/bin/fine": 0o755})  # fmt: skip
    assert checks.world_writable(root) == ["etc/sdbox/agent.toml", "usr/bin/tool", "var/lib/sdbox"]


def test_allowed_places_are_exact_not_prefixes(tmp_path: Path) -> None:
    root = tree(tmp_path, {"tmpfoo/": 0o1777, "var/tmp2": 0o666, "tmp/x/y": 0o666})
    assert checks.world_writable(root) == ["tmpfoo", "var/tmp2"]


def test_symlinks_and_unshipped_mount_points_are_not_counted(tmp_path: Path) -> None:
    root = tree(tmp_path, {"etc/": 0o755, "dev/null": 0o666, "run/lock/": 0o1777,
                           "proc/": 0o555})  # fmt: skip
    os.symlink("/run/lock", root / "etc" / "lock")  # a symlink's mode is always 0777
    assert checks.world_writable(root) == []
    (root / "etc" / "loose").mkdir(mode=0o755)
    (root / "etc" / "loose").chmod(0o777)
    assert checks.world_writable(root) == ["etc/loose"]


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:A1B2 0100007F:0CEA 01 00000000:00000000 00:00000000 00000000     0        0 2 1
"""
PROC_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 3 2 0 0
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1
"""


def test_proc_net_gives_listeners_with_addresses() -> None:
    found = checks.listeners_from_proc_net({"tcp": PROC_TCP, "udp": PROC_UDP, "tcp6": PROC_TCP6})
    assert found == [
        Listener("tcp", "127.0.0.1", 3306),
        Listener("tcp6", "::1", 22),
        Listener("udp", "0.0.0.0", 68),
    ]  # the established connection (state 01) is not a listener


SS = """\
udp   UNCONN 0      0            0.0.0.0:68         0.0.0.0:*    users:(("systemd-network",pid=301,fd=14))
udp   UNCONN 0      0      [fe80::5054:ff:fe12:3456]%enp0s2:546  [::]:*  users:(("systemd-network",pid=301,fd=16))
tcp   LISTEN 0      128        127.0.0.1%lo:631       0.0.0.0:*    users:(("cupsd",pid=400,fd=7))
tcp   LISTEN 0      4096               *:5355             *:*    users:(("systemd-resolve",pid=290,fd=12))
"""


def test_ss_output_gives_listeners_and_their_process() -> None:
    found = checks.listeners_from_ss(SS)
    assert [x.key for x in found] == ["tcp:631", "tcp6:5355", "udp:68", "udp6:546"]
    assert found[0].address == "127.0.0.1"
    assert "cupsd" in found[0].process


def test_only_stated_listeners_pass_loopback_included() -> None:
    found = checks.listeners_from_ss(SS)
    assert [x.key for x in checks.unexpected_listeners(found)] == ["tcp:631", "tcp6:5355"]
    assert checks.unexpected_listeners(checks.listeners_from_ss(SS.splitlines()[0])) == []


def _module(tree: Path, relative: str, depends: str) -> None:
    path = tree / "kernel" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    # what matters of a .ko here: its .modinfo strings, NUL-separated
    path.write_bytes(b"\x7fELF...\x00license=GPL\x00depends=" + depends.encode() + b"\x00vermagic=6.1\x00")


def test_a_kept_module_that_needs_a_left_out_one_is_named(tmp_path: Path) -> None:
    from sdbox.bootimage.checks import missing_module_dependencies

    _module(tmp_path, "drivers/gpu/drm/i915/i915.ko", "drm,cec,video")
    _module(tmp_path, "drivers/gpu/drm/drm.ko", "")
    _module(tmp_path, "drivers/media/cec/core/cec.ko", "rc-core")
    (tmp_path / "modules.builtin").write_text("kernel/drivers/acpi/video.ko\n")
    # rc-core (drivers/media/rc) was left out: cec, and so i915's display, would not load
    assert missing_module_dependencies(tmp_path) == {"cec": ["rc_core"]}
    _module(tmp_path, "drivers/media/rc/rc-core.ko", "")
    assert missing_module_dependencies(tmp_path) == {}


def _compile(tmp: Path, name: str, source: str, *flags: str) -> Path:
    """A real ELF object from gcc (the check reads what the dynamic linker reads)."""
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    subprocess.run(["gcc", "-o", str(out), str(src), *flags], check=True, capture_output=True,
                   timeout=120)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def elves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    tmp = tmp_path_factory.mktemp("elf")
    foo = _compile(tmp, "libfoo.so.1", "int foo(void) { return 1; }\n",
                   "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1")  # fmt: skip
    # a private library that needs its sibling but names no directory: the program that
    # loads both names their directory (as systemd and its libsystemd-core/-shared do)
    bar = _compile(tmp, "libbar.so.1", "int foo(void); int bar(void) { return foo(); }\n",
                   "-shared", "-fPIC", "-Wl,-soname,libbar.so.1", str(foo))  # fmt: skip
    prog = _compile(tmp, "prog", "int bar(void); int main(void) { return bar(); }\n",
                    "-Wl,--no-as-needed", str(bar), str(foo),
                    "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib/private")  # fmt: skip
    return {"foo": foo, "bar": bar, "prog": prog}


def _root_with(root: Path, elves: dict[str, Path]) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/private").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    shutil.copy(elves["prog"], root / "usr/bin/prog")
    shutil.copy(elves["bar"], root / "usr/lib/private/libbar.so.1")
    shutil.copy(elves["foo"], root / "usr/lib/private/libfoo.so.1")
    # libc through a relative link, as Debian ships its libraries; /lib is usr/lib (merged /usr)
    (root / "usr/lib/x86_64-linux-gnu/libc.so.6.real").write_text("x")
    (root / "usr/lib/x86_64-linux-gnu/libc.so.6").symlink_to("libc.so.6.real")
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/share/doc").mkdir(parents=True)
    (root / "usr/share/doc/readme").write_text("not an ELF file")
    return root


def test_the_linked_libraries_of_a_program_are_read_from_the_file(elves: dict[str, Path]) -> None:
    links = checks.dynamic_links(elves["prog"])
    assert links is not None
    assert {"libbar.so.1", "libfoo.so.1", "libc.so.6"} <= set(links.needed)
    assert links.search_path == ("$ORIGIN/../lib/private",)
    assert checks.dynamic_links(Path(__file__)) is None


def test_a_root_where_every_linked_library_is_present_passes(tmp_path: Path, elves: dict[str, Path]) -> None:
    assert checks.missing_shared_libraries(_root_with(tmp_path, elves)) == {}


def test_a_library_the_image_left_out_is_named_with_its_users(tmp_path: Path, elves: dict[str, Path]) -> None:
    root = _root_with(tmp_path, elves)
    (root / "usr/lib/private/libfoo.so.1").unlink()
    (root / "usr/lib/x86_64-linux-gnu/libc.so.6.real").unlink()  # the link now leads nowhere
    assert checks.missing_shared_libraries(root) == {
        "usr/bin/prog": ["libfoo.so.1", "libc.so.6"],
        "usr/lib/private/libbar.so.1": ["libfoo.so.1"],
    }


def test_a_production_root_has_no_way_to_turn_the_virtual_sensor_on(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/systemd/system").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/system/sdbox-agent.service").write_text("[Service]\nExecStart=x\n")
    (tmp_path / "etc/sdbox").mkdir(parents=True)
    (tmp_path / "etc/sdbox/agent.toml").write_text('[sensor]\nkind = "libfprint"\n')
    assert checks.test_build_hooks(tmp_path) == []


def test_the_e2e_relay_and_any_fp_virtual_setting_are_found(tmp_path: Path) -> None:
    drop_in = tmp_path / "etc/systemd/system/sdbox-agent.service.d/zz.conf"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text("[Service]\nEnvironment=FP_VIRTUAL_DEVICE=/run/x\n")
    relay = tmp_path / "usr/libexec/sdbox/e2e-relay"
    relay.parent.mkdir(parents=True)
    relay.write_text("")
    found = checks.test_build_hooks(tmp_path)
    assert "/usr/libexec/sdbox/e2e-relay" in found
    assert "/etc/systemd/system/sdbox-agent.service.d/zz.conf: FP_VIRTUAL_DEVICE" in found


def test_the_test_build_overlay_is_what_the_check_finds(tmp_path: Path) -> None:
    # the check and bootimage/rootfs-e2e/ must not drift apart: every file of it is caught
    overlay = Path(__file__).resolve().parents[2] / "bootimage" / "rootfs-e2e"
    found = checks.test_build_hooks(overlay)
    for name in checks.E2E_TEST_FILES:
        assert f"/{name}" in found
    assert any("FP_VIRTUAL_IMAGE" in line for line in found)
