"""bench/common.py: what every results file records about the command that wrote it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_common():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recorded_command_holds_no_absolute_path_of_the_machine(monkeypatch, tmp_path):
    common = bench_common()
    monkeypatch.setattr("sys.argv", [str(ROOT / "bench" / "gpu_mfu.py"), "--results", str(tmp_path / "out.json"),
                                     f"--data={ROOT / 'bench' / 'results' / 'a.json'}", "--deadline-s", "390",
                                     "relative/path.json"])
    command = common.command_line()
    assert command == ("python bench/gpu_mfu.py --results <elsewhere>/out.json --data=bench/results/a.json "
                       "--deadline-s 390 relative/path.json")
    assert str(tmp_path) not in command and str(ROOT) not in command
