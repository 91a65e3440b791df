"""tools/attention_bench.py end to end at CI size: the real server, 20
readers, every rule raised exactly once per reader and stuck cleared when
the reader went idle (its `--check`). Latencies are printed, not asserted,
except the time-based rules' bound of two sweep periods, which holds on a
loaded machine because it is a second, not milliseconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_attention_bench_checks_hold(tmp_path: Path) -> None:
    out = tmp_path / "attention.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURSOR_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "attention_bench.py"), "--readers", "20", "--check", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert len(result["checks"]) == 7
    assert all(ok for _, ok, _ in result["checks"])
    assert result["figures"]["struggling"]["due to watcher"]["n"] == 20
    assert "struggling p50 / answer p50" in done.stdout
