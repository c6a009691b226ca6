"""bench/common.py: what every results file records about the command that wrote it."""

from __future__ import annotations

import importlib.util
import json
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


def test_a_resumed_benchmark_keeps_every_command_that_wrote_its_file(monkeypatch, tmp_path):
    common = bench_common()
    monkeypatch.setenv("LEANTUNE_BENCH_COMMIT", "abc1234")  # one code version for both invocations
    out = tmp_path / "results.json"
    monkeypatch.setattr("sys.argv", ["bench/quality.py", "--tasks", "sms-spam"])
    common.write_results(out, {"jobs": {"a": 1}})
    monkeypatch.setattr("sys.argv", ["bench/quality.py", "--tasks", "sms-spam,word-forms"])
    resumed = common.load_results(out)
    resumed["jobs"]["b"] = 2
    common.write_results(out, resumed)
    written = json.loads(out.read_text())
    assert written["jobs"] == {"a": 1, "b": 2}
    assert written["_provenance"]["commands"] == ["python bench/quality.py --tasks sms-spam",
                                                  "python bench/quality.py --tasks sms-spam,word-forms"]
    # another commit's file is not added to: its jobs and commands are not carried over
    common.code_version.cache_clear()
    monkeypatch.setenv("LEANTUNE_BENCH_COMMIT", "def5678")
    assert common.load_results(out) == {}
