"""A bounded coverage-guided fuzzing run (atheris, tests/fuzz_atheris.py) seeded with the hostile corpus
and real IMAP transcripts: it must finish its time budget without a crash or a slow input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz_corpus import corpus
from tests.stack import ROOT
from tests.unit.test_fuzz_imap import TRANSCRIPTS

pytest.importorskip("atheris", reason="atheris is a dev dependency on Linux only")

BUDGET_SECONDS = 10


def test_atheris_finds_nothing_within_its_budget(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for name, raw in corpus("atheris"):
        (seeds / name).write_bytes(raw[:20_000])  # libFuzzer's inputs stay small; the start suffices
    for i, wire in enumerate(TRANSCRIPTS):
        (seeds / f"imap-{i}").write_bytes(b"I" + wire)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz_atheris",
            f"-max_total_time={BUDGET_SECONDS}",
            "-timeout=10",  # one input running longer than this is a hang: reported as a failure
            "-rss_limit_mb=2048",
            "-max_len=20000",
            f"-artifact_prefix={tmp_path}/",
            str(seeds),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUDGET_SECONDS + 60,
        check=False,
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    runs = re.search(r"Done (\d+) runs", proc.stderr)
    assert runs is not None, tail
    print(f"\natheris: {runs.group(1)} inputs in {BUDGET_SECONDS}s, no crash, no slow input")
    assert int(runs.group(1)) >= 100, "the fuzzer ran (thousands of inputs on an idle machine)"
