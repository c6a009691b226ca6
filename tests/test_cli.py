"""The command line: every user error is one clear paragraph on stderr, no traceback, exit code 2."""

import sys

import pytest

from conftest import tiny_overrides
from leantune.cli import main


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["leantune", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "300")  # keep rich from wrapping messages mid-phrase
    with pytest.raises(SystemExit) as e:
        main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_user_error(code, err, *phrases):
    assert code == 2, err
    assert "Traceback" not in err
    flat = " ".join(err.split())
    for phrase in phrases:
        assert phrase in flat, flat


def test_unknown_config_key(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "train", "training.learning_rate=1e-4")
    assert_user_error(code, err, "unknown key 'training.learning_rate'")


def test_ill_typed_config_value(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "train", "training.max_steps=ten")
    assert_user_error(code, err, "'training.max_steps'", "integer")


def test_missing_config_file(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", tmp_path / "run.yaml")
    assert_user_error(code, err, "does not exist")


def test_unreadable_yaml(monkeypatch, capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training: {lr: 1e-3\n")
    code, _, err = run_cli(monkeypatch, capsys, "train", path)
    assert_user_error(code, err, "Cannot read YAML at", str(path))


def test_two_config_files(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "train", "a.yaml", "b.yaml")
    assert_user_error(code, err, "at most one config file")


def test_unknown_model(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", "model.base=llama-9000", f"output.runs_dir={tmp_path}")
    assert_user_error(code, err, "Unknown model 'llama-9000'")


def test_empty_dataset(monkeypatch, capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    code, _, err = run_cli(monkeypatch, capsys, "train", *tiny_overrides(tiny_model_dir, data, tmp_path / "runs"))
    assert_user_error(code, err, "holds no examples")


def test_missing_dataset(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, _, err = run_cli(monkeypatch, capsys, "train", *tiny_overrides(tiny_model_dir, tmp_path / "nope.jsonl", tmp_path / "runs"))
    assert_user_error(code, err, "does not exist")


def test_resume_directory_that_is_not_a_run(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", "--resume", tmp_path)
    assert_user_error(code, err, "is not a leantune run")


def test_generate_from_a_base_model_and_from_a_run(monkeypatch, capsys, tmp_path, tiny_model_dir, chat_file):
    code, out, err = run_cli(monkeypatch, capsys, "generate", tiny_model_dir, "hello there", "--max-new-tokens", "5")
    assert code == 0, err  # a random model may say anything, even nothing: only the exit code is meaningful
    code, _, err = run_cli(monkeypatch, capsys, "train", *tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs"))
    assert code == 0, err
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    code, out, err = run_cli(monkeypatch, capsys, "generate", run, "Is message 3 spam?", "--max-new-tokens", "8")
    assert code == 0, err


def test_generate_from_a_run_without_adapter(monkeypatch, capsys, tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model:\n  base: {tiny_model_dir}\n")
    code, _, err = run_cli(monkeypatch, capsys, "generate", run, "hi")
    assert_user_error(code, err, "has no adapter", "leantune train --resume")


def test_a_usage_error_is_a_message_not_a_traceback(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "data", "check", "x.jsonl", "--no-such-option")
    assert code == 2 and "No such option" in err and "Traceback" not in err
