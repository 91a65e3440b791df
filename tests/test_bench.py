"""The benchmark harness (tools/bench.py) end to end, at CI size.

Numbers are not asserted (2 shared cores say little); what is asserted is that
every scenario ran against the real server and that the harness's own
correctness checks held: every event sent is a row in the database afterwards,
the batched run stored exactly what it sent, every login made one session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "bench.py"


def _block_optional_packages(folder: Path) -> Path:
    """Packages named rich and matplotlib that fail to import, to run the bench
    as CI does (`make test` installs only `.[dev]`) wherever the test runs."""
    for name in ("rich", "matplotlib"):
        package = folder / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('{name} is blocked by the test')\n")
    return folder


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    work = tmp_path_factory.mktemp("bench")
    out = work / "out"
    blocked = _block_optional_packages(work / "blocked")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURSOR_")}
    env["PYTHONPATH"] = str(blocked)
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--ci", "--check", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    return done, out


@pytest.mark.slow
def test_bench_runs_every_scenario_and_its_checks_hold(ci_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = ci_run
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    data = json.loads((out / "results.json").read_text())
    failed = [c for c in data["checks"] if not c["ok"]]
    assert not failed, failed
    names = " ".join(c["name"] for c in data["checks"])
    expected = ["1. x1", "1. x4", "2. batched", "2. raw", "3. at 0", "3. at 2k", "every login of the storm"]
    if data["fanout"]["available"]:  # the server has WatchActivity: every watcher and poller saw every event
        expected += ["4. no watchers", "4. 1 watcher", "4. 3 watchers at", "4. 3 watchers at the highest rate",
                     "4. 3 pollers", "6. 50 idle streams", "6. churn", "open stream count is 0"]
    for name in expected:
        assert name in names, f"check {name!r} did not run"
    scenarios = {row["scenario"].split()[0] for row in data["rows"]}
    assert scenarios >= {"1", "2", "3", "4", "5", "6"}
    # Every target row has a verdict and a figure.
    for row in data["rows"]:
        assert row["verdict"] in {"pass", "miss", "info", "n/a", "noisy"}, row
        assert row["measured"], row
    # The table went to stdout; results.md holds the same rows.
    assert "RecordInteraction" in done.stdout
    assert (out / "results.md").read_text().count("\n| ") == len(data["rows"])
    # Without rich and matplotlib: plain progress lines, no chart, still a full run.
    assert not (out / "bench.png").exists()
    assert "no chart" in done.stderr


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cursor_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_chart_is_drawn_from_the_results(ci_run: tuple[subprocess.CompletedProcess[str], Path],
                                         tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra is not installed")
    done, out = ci_run
    assert done.returncode == 0
    data = json.loads((out / "results.json").read_text())
    chart = tmp_path / "chart.png"
    assert _load_bench().draw_chart(data, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_percentiles_are_nearest_rank() -> None:
    bench = _load_bench()
    samples = list(range(1000, 101_000, 1000))  # 1..100 ms in microseconds
    assert bench.percentile(samples, 0.50) == 50.0
    assert bench.percentile(samples, 0.99) == 99.0
    assert bench.percentile([7000], 0.99) == 7.0
    assert bench.percentile([], 0.5) != bench.percentile([], 0.5)  # NaN
