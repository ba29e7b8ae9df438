"""Who uses the shared pcscd: the last user stops it, never one that another run still uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbox.smartcard.emulator import stack
from sdbox.smartcard.emulator.stack import PcscDaemon


def shared(daemon: PcscDaemon) -> bool:
    """Asked afresh each time (a property mypy would otherwise narrow)."""
    return daemon.shared


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(stack, "LOCK_DIR", tmp_path)
    return tmp_path


def test_each_user_sees_the_others_and_checking_loses_nothing() -> None:
    first, second = PcscDaemon(port=1), PcscDaemon(port=1)
    first.join()
    second.join()
    for _ in range(3):  # asking again and again must not drop anyone's claim
        assert first.shared
        assert second.shared
    second.cleanup()
    assert not first.shared
    first.cleanup()


def test_a_dead_users_claim_is_cleared(lock_dir: Path) -> None:
    (lock_dir / "sdbox-pcscd-1-user-999999-dead.lock").touch()  # nobody holds it
    alone = PcscDaemon(port=1)
    alone.join()
    assert not alone.shared
    assert not (lock_dir / "sdbox-pcscd-1-user-999999-dead.lock").exists()
    alone.cleanup()


def test_an_older_run_holding_the_legacy_shared_lock_counts(lock_dir: Path) -> None:
    import fcntl

    with (lock_dir / "sdbox-pcscd-1.lock").open("ab") as legacy:
        fcntl.flock(legacy, fcntl.LOCK_SH)
        me = PcscDaemon(port=1)
        me.join()
        assert shared(me)
    assert not shared(me)
    me.cleanup()
