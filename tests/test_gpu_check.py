"""bench/gpu_check.sh runs end to end in its tiny --smoke mode (the full run needs a GPU and is not a test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = {("teacher forcing", "–", "batched")} | {(f"K {k}", s, c) for k in (3, 10) for s in ("unipc", "rk4")
                                                for c in ("shrinking", "balanced", "one sample at a time")}


def smoke(tmp_path, compile_mode: str) -> list[list]:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--smoke", "--device", "cpu", "--compile", compile_mode,
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (table,) = json.loads((tmp_path / "gpu_check.json").read_text())["tables"]
    assert table["columns"] == ["rollout", "sampler", "calls", "torch.compile", "step ms", "× TF", "peak GB",
                                "extra evals / sample"]
    assert "GPU check" in (tmp_path / "gpu_check.md").read_text()
    return table["rows"]


def check_rows(rows, backend: str) -> None:
    assert {tuple(r[:3]) for r in rows} == ROWS and all(r[3] == backend for r in rows)
    for rollout, sampler, _, _, ms, ratio, _, evals in rows:
        assert ms > 0 and math.isfinite(ratio)
        total = evals * 2  # per sample -> per step (batch 2)
        assert (total == 0) if rollout == "teacher forcing" else (total > 0 and total % (4 if sampler == "rk4" else 1) == 0)
    assert next(r for r in rows if r[0] == "teacher forcing")[5] == 1.0


def test_gpu_check_smoke_runs(tmp_path):
    check_rows(smoke(tmp_path, "off"), "off")


@pytest.mark.slow
def test_gpu_check_smoke_with_torch_compile(tmp_path):
    check_rows(smoke(tmp_path, "on"), "eager")
