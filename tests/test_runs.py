"""The runs index, duplicate detection, the cost ledger and budget, comparisons, and the registry."""

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import tiny_overrides
from leantune.errors import BudgetError, DuplicateRunError
from leantune.runs.index import RunIndex
from leantune import train
from test_cli import run_cli

FAST = {"training.max_steps": 3, "training.checkpoint_every": 100}


def quick(tiny_model_dir, chat_file, runs, **extra):
    return train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{**FAST, **extra}))


def test_index_records_runs_with_cost_and_refuses_a_duplicate(tiny_model_dir, chat_file, tmp_path, capsys):
    runs = tmp_path / "runs"
    first = quick(tiny_model_dir, chat_file, runs, **{"cost.usd_per_hour": 36.0})
    [row] = RunIndex(runs).runs()
    assert row["status"] == "completed" and row["steps"] == 3 and row["method"] == "lora"
    billed = json.loads((first.run_dir / "run.json").read_text())["billed"]
    # the index holds the run's own bill (the whole process), which is more than its steps' time at the price
    assert (row["cost_usd"], row["wall_s"], row["usd_per_hour"]) == (billed["usd"], billed["seconds"], 36.0)
    assert row["cost_usd"] > first.elapsed_s / 3600 * 36.0
    assert row["usd_per_m_tokens"] == pytest.approx(row["cost_usd"] / row["tokens"] * 1e6)
    assert row["config_fp"] and row["data_fp"] and row["model_fp"]

    # same config, data and model, another name and output settings: refused before anything loads
    with pytest.raises(DuplicateRunError, match=f"repeats completed run {first.run_dir.name}"):
        quick(tiny_model_dir, chat_file, runs, **{"output.name": "again", "training.eval_every": 2, "cost.usd_per_hour": 1})
    # the same data under another file name is still the same data
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(chat_file.read_bytes())
    with pytest.raises(DuplicateRunError):
        quick(tiny_model_dir, copy, runs, **{"cost.usd_per_hour": 36.0})
    forced = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{**FAST, "cost.usd_per_hour": 36.0}),
                   allow_duplicate=True)
    assert forced.run_dir != first.run_dir

    # one field different: runs, and the near miss is named
    from io import StringIO

    from rich.console import Console

    log = StringIO()
    train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{**FAST, "training.lr": 1e-3}),
          console=Console(file=log, width=300))
    assert "similar completed runs" in log.getvalue() and "training.lr" in log.getvalue()
    assert len(RunIndex(runs).runs()) == 3


def test_runs_cli_ls_show_compare_diff_reindex(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    a = quick(tiny_model_dir, chat_file, runs)
    b = quick(tiny_model_dir, chat_file, runs, **{"method.r": 4})
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "ls", "--runs-dir", runs)
    assert code == 0 and a.run_dir.name[:10] in out and "2 runs" in out
    report = (a.run_dir / "report.md").read_text()
    assert "## Plan vs actual" in report and "| peak memory |" in report and "| training time |" in report
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "show", a.run_dir.name, "--runs-dir", runs)
    assert code == 0 and "planned" in out and "peak memory" in out and "adapter/" in out
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "diff", a.run_dir.name, b.run_dir.name, "--runs-dir", runs)
    assert code == 0 and "method.r: 8 -> 4" in out
    png = tmp_path / "curves.png"
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "compare", a.run_dir.name, b.run_dir.name, "--runs-dir", runs,
                           "-o", png)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG" and "method.r" in out
    # unknown id: a suggestion
    code, _, err = run_cli(monkeypatch, capsys, "runs", "show", a.run_dir.name[:-1] + "X", "--runs-dir", runs)
    assert code == 2 and "Did you mean" in err
    # a damaged run directory is reported and the others still indexed
    (b.run_dir / "run.json").write_text("{not json")
    (runs / "index.sqlite").unlink()
    code, out, err = run_cli(monkeypatch, capsys, "runs", "reindex", "--runs-dir", runs)
    assert code == 0 and "run.json: unreadable" in err and "indexed 1 of 2" in out
    assert [r["id"] for r in RunIndex(runs).runs()] == [a.run_dir.name]


def test_budget_alerts_and_refusal(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    for bad in ("0", "lots", "inf", "nan"):
        code, _, err = run_cli(monkeypatch, capsys, "budget", "set", bad, "--runs-dir", runs)
        assert code == 2 and "positive number" in err, bad
    code, _, err = run_cli(monkeypatch, capsys, "budget", "set", "--runs-dir", runs, "--", "-5")
    assert code == 2 and "positive number" in err
    # the plan (FLOPs at 50 GFLOP/s) fits this budget; the tiny model's real wall time (Python overhead) does not
    code, out, _ = run_cli(monkeypatch, capsys, "budget", "set", "0.0002", "--runs-dir", runs)
    assert code == 0
    first = quick(tiny_model_dir, chat_file, runs, **{"cost.usd_per_hour": 36.0})
    alerts = (runs / "alerts.log").read_text()
    assert "past 50%" in alerts and "past 80%" in alerts and "past 100%" in alerts
    with pytest.raises(BudgetError, match="more than the .* left"):
        quick(tiny_model_dir, chat_file, runs, **{"cost.usd_per_hour": 36.0, "training.lr": 1e-3})
    assert sorted(r["status"] for r in RunIndex(runs).runs()) == ["completed", "refused-budget"]  # not "failed"
    code, out, _ = run_cli(monkeypatch, capsys, "budget", "--runs-dir", runs)
    assert code == 0 and "of $0.000200 spent" in out
    assert first.cost_usd > 0


def test_registry_push_promote_rollback(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    one = quick(tiny_model_dir, chat_file, runs)
    two = quick(tiny_model_dir, chat_file, runs, **{"training.lr": 1e-3})
    for run, version in ((one, 1), (two, 2)):
        code, out, _ = run_cli(monkeypatch, capsys, "registry", "push", run.run_dir.name, "--name", "support-bot",
                               "--runs-dir", runs)
        assert code == 0 and f"support-bot v{version}" in out
    run_cli(monkeypatch, capsys, "registry", "promote", "support-bot", "1", "--stage", "production", "--runs-dir", runs)
    run_cli(monkeypatch, capsys, "registry", "promote", "support-bot", "2", "--stage", "production", "--runs-dir", runs)

    def stages():
        return dict(sqlite3.connect(runs / "index.sqlite").execute("SELECT version, stage FROM registry").fetchall())

    assert stages() == {1: "archived", 2: "production"}
    code, out, _ = run_cli(monkeypatch, capsys, "registry", "rollback", "support-bot", "--runs-dir", runs)
    assert code == 0 and "production v2 -> v1" in out and stages() == {1: "production", 2: "archived"}
    # the registered copy survives the run's deletion
    import shutil

    shutil.rmtree(one.run_dir)
    registered = runs / "registry" / "support-bot" / "v1"
    assert (registered / "adapter_config.json").is_file()
    code, _, err = run_cli(monkeypatch, capsys, "registry", "push", two.run_dir.name, "--name", "1bad name", "--runs-dir", runs)
    assert code == 2 and "not valid" in err
    code, _, err = run_cli(monkeypatch, capsys, "registry", "show", "nobody", "--runs-dir", runs)
    assert code == 2 and "No model named 'nobody'" in err


def test_two_trainings_and_a_reader_at_once_keep_the_index_whole(tiny_model_dir, chat_file, tmp_path):
    runs = tmp_path / "runs"
    procs = [subprocess.Popen([sys.executable, "-m", "leantune.cli", "train",
                               *tiny_overrides(tiny_model_dir, chat_file, runs, **{**FAST, "training.max_steps": 6,
                                                                                    "training.lr": lr})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for lr in ("1e-3", "2e-3")]
    reads = 0
    while any(p.poll() is None for p in procs):
        if (runs / "index.sqlite").exists():
            RunIndex(runs).runs()  # a reader during the writes
            reads += 1
        time.sleep(0.05)
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err
    rows = RunIndex(runs).runs()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"} and reads > 0
    assert sqlite3.connect(runs / "index.sqlite").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_gpu_run_from_before_prices_were_recorded_is_billed_at_its_cards_catalog_price():
    from leantune.runs.cost import run_cost

    steps = [{"step": 4, "loss": 1.0, "elapsed_s": 3600.0}]
    h100 = run_cost({"device": "cuda:NVIDIA H100 80GB HBM3"}, steps, None)
    assert (h100.usd, h100.price.source) == (3.0, "catalog h100")
    a100 = run_cost({"device": "cuda:NVIDIA A100-SXM4-40GB"}, steps, None)
    assert (a100.usd, a100.price.source) == (1.3, "catalog a100-40gb")
    assert run_cost({"device": "cpu"}, steps, None).usd is None  # no price: unknown, not $0


def test_fingerprints_follow_content_for_every_input(tiny_model_dir, tmp_path, monkeypatch):
    """Data, model (weights, config, tokenizer, chat template), EWC / replay data and a teacher enter the
    fingerprints by content: a copy is the same experiment, an edit is a new one; an unreadable input is refused."""
    import shutil

    from leantune.config import load_config
    from leantune.data import builtin
    from leantune.errors import DataError
    from leantune.runs.fingerprint import data_fingerprint, fingerprints, model_fingerprint

    # every built-in dataset by the content of the files it ships in
    for name in builtin.BUILTIN_INFO:
        original = data_fingerprint(name)
        files = builtin.BUILTIN_INFO[name].files()
        edited = tmp_path / f"{name}-{files[0].name}"
        edited.write_bytes(files[0].read_bytes() + b"\n")
        import dataclasses

        changed = dataclasses.replace(builtin.BUILTIN_INFO[name], files=lambda e=edited, rest=files[1:]: [e, *rest])
        monkeypatch.setitem(builtin.BUILTIN_INFO, name, changed)
        assert data_fingerprint(name) != original, name
        monkeypatch.undo()

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_model_dir))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["chat_template"] = (config.get("chat_template") or "") + "{# edited #}"
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert model_fingerprint(str(copy)) != model_fingerprint(str(tiny_model_dir))  # the tokenizer is part of it

    general = tmp_path / "general.jsonl"
    general.write_text('{"prompt": "a", "completion": "b"}\n')
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(general.read_bytes())

    def config_fp(**fields):
        return fingerprints(load_config(None, [f"{k}={v}" for k, v in fields.items()]))["config_fp"]

    for key, switch in (("forgetting.ewc_data", "forgetting.ewc_lambda"), ("forgetting.replay_data", "forgetting.replay_fraction")):
        before = config_fp(**{switch: 0.1, key: general})
        assert config_fp(**{switch: 0.1, key: moved}) == before  # a renamed copy is the same input
        general.write_text(f'{{"prompt": "a", "completion": "{key}"}}\n')
        assert config_fp(**{switch: 0.1, key: general}) != before  # an edited one is not
        with pytest.raises(DataError, match=f"{key}: .*'nowhere.jsonl' does not exist"):
            config_fp(**{switch: 0.1, key: "nowhere.jsonl"})
        moved.write_bytes(general.read_bytes())
    teacher = config_fp(**{"objective.name": "distill", "objective.teacher": tiny_model_dir})
    assert config_fp(**{"objective.name": "distill", "objective.teacher": copy}) != teacher  # edited tokenizer
