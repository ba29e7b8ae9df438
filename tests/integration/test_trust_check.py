"""`sdbox trust check` on the real pcscd: every certificate of the inserted card, as the agent sees it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509

from sdbox.smartcard.profile import certificate_object, decode_certificate
from tests.cli import sdbox_argv
from tests.integration.agent_env import publish_crls, write_config
from tests.integration.conftest import InsertedCard

PROJECTS = {"census-2021": "82", "health-cohort": "83", "genomics-lab": "84"}


def _check(tmp_path: Path, card: InsertedCard, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*sdbox_argv(), "trust", "check", "--config", str(tmp_path / "agent.toml"),
         "--reader", card.reader, *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _entries(doc: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(e["what"], e["project"] or e["slot"]): e for e in doc["certificates"]}


def test_a_freshly_issued_card_passes_every_check(demo_card: InsertedCard, tmp_path: Path) -> None:
    write_config(tmp_path, demo_card.pki, display=":0")
    publish_crls(demo_card.pki, tmp_path / "crl")
    done = _check(tmp_path, demo_card, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["valid"] is True
    assert doc["revocation_checked"] is True
    assert doc["guid"] == demo_card.state.guid.hex().upper()
    entries = _entries(doc)
    assert entries[("holder", "9A")]["valid"] is True
    assert entries[("directory signer", None)]["valid"] is True
    assert entries[("project directory", None)]["valid"] is True
    for project, slot in PROJECTS.items():
        assert entries[("project", project)]["slot"] == slot
        assert project in entries[("project", project)]["subject"]
        assert entries[("bubble server", project)]["valid"] is True
    # nothing else: every on-card certificate belongs to a listed project
    assert len(doc["certificates"]) == 3 + 2 * len(PROJECTS)
    assert all(e["valid"] and e["problem"] is None for e in doc["certificates"])

    human = _check(tmp_path, demo_card)
    assert human.returncode == 0, human.stderr
    assert "project census-2021 slot 82: ok" in human.stdout


def test_a_revoked_project_certificate_is_named_and_the_exit_status_is_trusts(
    demo_card: InsertedCard, tmp_path: Path
) -> None:
    write_config(tmp_path, demo_card.pki, display=":0")
    census = x509.load_der_x509_certificate(
        decode_certificate(demo_card.state.objects[certificate_object(0x82)])
    )
    demo_card.pki.revoke(census, x509.ReasonFlags.key_compromise)
    publish_crls(demo_card.pki, tmp_path / "crl")
    done = _check(tmp_path, demo_card, "--json")
    assert done.returncode == 5, done.stderr  # trust (README: exit codes)
    assert "1 of 9 checks refused" in done.stderr
    doc = json.loads(done.stdout)  # the document is still the whole of stdout
    assert doc["valid"] is False
    refused = [e for e in doc["certificates"] if not e["valid"]]
    assert [(e["what"], e["project"], e["slot"]) for e in refused] == [("project", "census-2021", "82")]
    assert "revoked" in refused[0]["problem"]


def test_without_cached_crls_nothing_passes_silently(demo_card: InsertedCard, tmp_path: Path) -> None:
    write_config(tmp_path, demo_card.pki, display=":0")  # no CRL published into the cache
    done = _check(tmp_path, demo_card)
    assert done.returncode == 5
    assert "REFUSED" in done.stdout
    assert ": ok" not in done.stdout.replace("project directory: ok", "")


def test_a_certificate_the_directory_does_not_name_is_refused(
    demo_card: InsertedCard, tmp_path: Path
) -> None:
    write_config(tmp_path, demo_card.pki, display=":0")
    publish_crls(demo_card.pki, tmp_path / "crl")
    objects = demo_card.state.objects
    first, second = certificate_object(0x82), certificate_object(0x83)
    objects[first], objects[second] = objects[second], objects[first]  # valid, but swapped
    done = _check(tmp_path, demo_card, "--json")
    assert done.returncode == 5, done.stderr
    refused = {e["project"]: e["problem"] for e in json.loads(done.stdout)["certificates"] if not e["valid"]}
    assert set(refused) == {"census-2021", "health-cohort"}
    assert all("not the one the project directory names" in p for p in refused.values())
