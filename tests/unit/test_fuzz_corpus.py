"""The fuzz targets' committed seed corpora, and their coverage feedback (fuzz/seeds.py, fuzz/run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import seeds, targets
from sdbox.renewal import cmp

CORPUS = seeds.CORPUS
MAX_BYTES_PER_TARGET = 8 * 1024  # seeds, not a dataset: a few KB each


def _seeds() -> list[tuple[str, Path]]:
    return [(name, f) for name in targets.TARGETS for f in sorted((CORPUS / name).glob("*"))]


def test_every_target_has_a_small_seed_corpus_and_every_corpus_a_target() -> None:
    for name in targets.TARGETS:
        files = [f for f in (CORPUS / name).glob("*") if f.is_file()]
        assert files, f"fuzz/corpus/{name} has no seeds: run python -m fuzz.seeds"
        assert sum(f.stat().st_size for f in files) <= MAX_BYTES_PER_TARGET, name
    assert {d.name for d in CORPUS.iterdir()} == set(targets.TARGETS)


def test_the_committed_seeds_are_what_the_generator_makes() -> None:
    # names and kinds only: keys and certificates are fresh on every run
    built = seeds.build()
    committed = {name: sorted(f.name for f in (CORPUS / name).iterdir()) for name in built}
    assert committed == {name: sorted(files) for name, files in built.items()}


@pytest.mark.parametrize(("target", "seed"), _seeds(), ids=lambda v: getattr(v, "name", v))
def test_each_seed_runs_through_its_target_with_at_most_a_typed_error(
    target: str, seed: Path
) -> None:
    targets.guarded(targets.TARGETS[target])(seed.read_bytes())


def test_the_client_seed_is_a_whole_card_session() -> None:
    # every answer the box asks for is in the recording: no typed error either
    targets.client((CORPUS / "client" / "session").read_bytes())


def test_the_cmp_seeds_are_the_answers_a_ca_gives() -> None:
    kinds = {f.name: cmp.parse_answer(f.read_bytes()) for f in (CORPUS / "cmp-answer").iterdir()}
    assert {name: answer.body for name, answer in kinds.items()} == {
        "kup": cmp.BodyType.KUP,
        "pollrep": cmp.BodyType.POLLREP,
        "error": cmp.BodyType.ERROR,
        "pkiconf": cmp.BodyType.PKICONF,
    }
    assert kinds["kup"].certificate is not None
    assert kinds["pollrep"].check_after_s == 5


def test_every_module_the_seeds_reach_gets_coverage_feedback() -> None:
    # a fresh interpreter, as `make fuzz` starts one per target
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--check"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report == {"imported_while_fuzzing": [], "uninstrumented": []}
