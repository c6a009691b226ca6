"""The user-facing errors of data, methods, objectives, runs and the registry that other test files do not
already feed: each one gets the bad input and its message is checked (exit 2 through the CLI)."""

import json
import sqlite3

import pytest

from conftest import tiny_overrides
from leantune.config import load_config
from leantune.errors import ConfigError, DataError, RegistryError, RunDirError
from leantune.runs.index import RunIndex
from leantune.runs.registry import promote, push, rollback
from leantune import train
from test_cli import run_cli

FAST = {"training.max_steps": 3, "training.checkpoint_every": 100}


def test_preview_with_an_unknown_truncation_policy(tmp_path, monkeypatch, capsys, tiny_model_dir):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "data", "preview", path, "--model", tiny_model_dir, "--truncation", "nope")
    assert code == 2 and "--truncation 'nope' is not one of keep_end, keep_start, drop" in err


def test_clean_of_an_empty_file(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_cli(monkeypatch, capsys, "data", "clean", empty, "-o", tmp_path / "out.jsonl")
    assert code == 2 and "holds no rows; there is nothing to clean" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_adalora_schedules_without_room_to_prune():
    with pytest.raises(ConfigError, match=r"method.tinit \+ method.tfinal = 1 must be below 1"):
        load_config(None, ["method.name=adalora", "method.tinit=0.5", "method.tfinal=0.5"])


def test_self_distillation_needs_an_adapter(tiny_model_dir, chat_file, tmp_path):
    values = {"objective.name": "distill", "method.name": "full", **FAST}
    with pytest.raises(ConfigError, match="Set objective.teacher for full fine-tuning"):
        train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path, **values))


def test_replay_with_dpo_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(8)))
    import leantune.training.recipe as recipe

    monkeypatch.setattr(recipe, "load_base", lambda *a, **k: pytest.fail("the model was loaded"))
    values = {"objective.name": "dpo", "forgetting.replay_fraction": 0.1, "data.eval_size": 2}
    with pytest.raises(ConfigError, match="replay_fraction .* does not apply to DPO"):
        train(None, tiny_overrides(tiny_model_dir, pairs, tmp_path / "runs", **values))


def test_mlflow_without_a_uri(tiny_model_dir, chat_file, tmp_path):
    with pytest.raises(ConfigError, match="tracking.backend=mlflow needs tracking.uri"):
        train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path, **{"tracking.backend": "mlflow"}))


def test_an_ambiguous_run_prefix_and_compare_with_one_run(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    a = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **FAST))
    train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **FAST, **{"training.lr": 1e-3}))
    with pytest.raises(RunDirError, match="matches 2 runs .* give more of the id"):
        RunIndex(runs).find("2")
    code, _, err = run_cli(monkeypatch, capsys, "runs", "compare", a.run_dir.name, "--runs-dir", runs)
    assert code == 2 and "needs at least two runs" in err


def test_registry_refusals(tiny_model_dir, chat_file, tmp_path):
    runs = tmp_path / "runs"
    done = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **FAST))
    index = RunIndex(runs)
    row = index.find(done.run_dir.name)
    with pytest.raises(RegistryError, match="has no finished adapter or model to register .*status: running"):
        push(index, {**row, "status": "running"}, "bot")
    push(index, row, "bot")
    with pytest.raises(RegistryError, match="bot has no version 7 .*versions: 1"):
        promote(index, "bot", 7, "production")
    with pytest.raises(RegistryError, match="Stage 'live' is not one of none, staging, production, archived"):
        promote(index, "bot", 1, "live")
    with pytest.raises(RegistryError, match="bot has no version in production"):
        rollback(index, "bot")
    promote(index, "bot", 1, "production")
    with pytest.raises(RegistryError, match="first version ever in production"):
        rollback(index, "bot")
    assert sqlite3.connect(runs / "index.sqlite").execute("SELECT stage FROM registry").fetchone()[0] == "production"


def test_a_data_file_that_changes_between_clean_passes(tmp_path, monkeypatch):
    from leantune.data import clean as clean_module

    path = tmp_path / "d.jsonl"
    rows = [json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}) for i in range(4)]
    path.write_text("\n".join(rows) + "\n")
    real_scan = clean_module.scan_rows
    calls = []

    def growing_scan(p, *args, **kwargs):
        calls.append(p)
        if len(calls) == 2:  # the second pass sees a row the first did not
            path.write_text("\n".join(rows + [json.dumps({"prompt": "new", "completion": "row"})]) + "\n")
        return real_scan(p, *args, **kwargs)

    monkeypatch.setattr(clean_module, "scan_rows", growing_scan)
    with pytest.raises(DataError, match="changed while it was being cleaned"):
        clean_module.clean_file(path, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
