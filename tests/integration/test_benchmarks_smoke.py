"""The benchmark scripts run (tiny sizes): a broken benchmark is found here, not on a cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_vit_g_step_script_runs_tiny_on_two_ranks() -> None:
    """Same code path as `make vit-g-step` (rank launch, zero.Init, masks, timed steps) on vit_tiny."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.vit_g_step", "--tiny"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
