"""sdbox-enrol's first-boot script: which `sdbox` commands it runs (its programs recorded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bootimage/rootfs/usr/libexec/sdbox/first-boot-enrol"


def _script(root: Path, answers: dict[str, tuple[int, str]]) -> tuple[dict[str, Any], list[list[str]]]:
    source = SCRIPT.read_text().removesuffix("sys.exit(main())\n")
    assert source != SCRIPT.read_text(), "first-boot-enrol no longer ends with sys.exit(main())"
    script: dict[str, Any] = {"__name__": "first_boot_enrol"}
    exec(compile(source, str(SCRIPT), "exec"), script)  # our own boot script, its last line cut
    ran: list[list[str]] = []

    def run(argv: list[str], timeout: int = 120) -> tuple[int, str]:
        ran.append(argv)
        return answers.get(" ".join(argv[:3]), (0, ""))

    mount = root / "config"
    mount.mkdir()
    script.update(run=run, MOUNT=mount, TOKEN=mount / "enrolment-token",
                  MARKER=root / "var" / "enrolled", SITE=root / "site.toml",
                  CERTIFICATE=root / "var" / "identity" / "box.pem")  # fmt: skip
    (root / "var" / "identity").mkdir(parents=True)
    return script, ran


def test_a_first_boot_enrols_without_checking_a_certificate_it_does_not_have(tmp_path: Path) -> None:
    script, ran = _script(tmp_path, {"sdbox identity enrol": (0, "enrolled: qemu-box-1")})
    script["TOKEN"].write_text("one-time")
    assert script["enrol"]() == 0
    assert [argv[:3] for argv in ran] == [["sdbox", "identity", "enrol"]]


@pytest.mark.parametrize("certificate", [True, False])
def test_a_certificate_or_a_missing_token_is_checked_first(tmp_path: Path, certificate: bool) -> None:
    script, ran = _script(tmp_path, {"sdbox identity check": (5, "no certificate")})
    if certificate:
        script["CERTIFICATE"].write_text("a certificate from an enrolment cut short")
        script["TOKEN"].write_text("one-time")
    code = script["enrol"]()
    assert ran[0][:3] == ["sdbox", "identity", "check"]
    if certificate:  # not in force: enrolment is completed with the token
        assert code == 0
        assert [argv[:3] for argv in ran[1:]] == [["sdbox", "identity", "enrol"]]
    else:  # nothing to enrol with: the failure quotes the check
        assert code == 1
        assert len(ran) == 1
