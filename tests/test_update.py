"""Incremental updates (`leantune train --from RUN`): the child starts from the parent's adapter, replays the parent's
training split, anchors EWC to the parent, records lineage, and is compared with the parent on the same items;
what cannot be continued is refused with exit 2."""

import json
import shutil
import sqlite3

import pytest
import torch
from safetensors.torch import load_file

from conftest import chat_row, tiny_overrides
from leantune import train
from leantune.errors import ConfigError, DuplicateRunError
from leantune.runs.index import RunIndex
from test_cli import run_cli


def write_reviews(path, rows: int = 48):
    """A second task for the update: good / bad reviews."""
    path.write_text("".join(json.dumps(chat_row(f"Review {i}: is it good or bad?", "good" if i % 2 == 0 else "bad")) + "\n"
                            for i in range(rows)))
    return path


@pytest.fixture(scope="module")
def parent(tiny_model_dir, tmp_path_factory):
    from conftest import write_spam_chat

    root = tmp_path_factory.mktemp("update")
    data = write_spam_chat(root / "old.jsonl")
    result = train(None, tiny_overrides(tiny_model_dir, data, root / "runs", **{"output.name": "bot"}))
    return result.run_dir


def child_overrides(parent_dir, new_data, **extra):
    values = {"data.train": str(new_data), "output.runs_dir": str(parent_dir.parent), "forgetting.ewc_examples": 8,
              "training.max_steps": 6, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def steps(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_the_update_starts_from_the_parent_and_records_its_lineage(parent, tmp_path):
    new = write_reviews(tmp_path / "new.jsonl")
    # a learning rate too small to move anything: the child's adapter is then the parent's, loaded
    child = train(None, child_overrides(parent, new, **{"training.lr": 1e-12, "forgetting.ewc_lambda": 0}), parent=str(parent))
    before, after = load_file(parent / "adapter" / "adapter_model.safetensors"), load_file(child.run_dir / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert any(before[k].abs().sum() > 0 for k in before if "lora_B" in k)  # the parent learned something to carry over

    config = child.run_dir / "config.yaml"
    assert f"parent: {parent.resolve()}" in config.read_text()
    row = next(r for r in RunIndex(parent.parent).runs() if r["id"] == child.run_dir.name)
    assert row["parent"] == parent.name
    report = json.loads((child.run_dir / "update.json").read_text())
    assert report["parent"] == parent.name and report["gain"]["task"] == "new held-out"
    assert report["retention"]["task"] == "parent held-out" and report["forgetting"]["questions"] > 0
    assert set(report["gain"]["balanced_accuracy"]) == {"parent", "child"}  # a majority-class gain shows there
    assert report == child.update
    assert "## Update vs parent" in (child.run_dir / "report.md").read_text()


def test_ewc_is_anchored_to_the_parent_and_replay_rehearses_its_training_rows(parent, tmp_path, capsys):
    new = write_reviews(tmp_path / "new.jsonl")
    child = train(None, child_overrides(parent, new, **{"forgetting.ewc_lambda": 100.0}), parent=str(parent))
    penalties = [s["ewc_penalty"] for s in steps(child.run_dir)]
    # at step 1 the weights are the parent's: no change from the anchor yet, though the adapter is far from zero
    assert penalties[0] == 0.0 and penalties[-1] > 0
    err = " ".join(capsys.readouterr().err.split())  # unwrapped
    assert "replay:" in err and "from parent mixed into 40 training rows" in err
    assert "Fisher information on 8 of the parent's training examples, its adapter active" in err


def test_replay_never_draws_the_parents_held_out_rows(parent):
    from leantune.evaluation.tasks import held_out_examples
    from leantune.runs.rundir import open_run_dir
    from leantune.training.lineage import parent_training_examples

    config = open_run_dir(parent).config().model_copy(deep=True)
    config.model.parent = str(parent)
    train_prompts = {json.dumps(e.messages) for e in parent_training_examples(config)}
    held = {json.dumps(e.messages) for e in held_out_examples(open_run_dir(parent).config())}
    assert train_prompts and held and not train_prompts & held


def test_the_same_update_twice_is_a_duplicate(parent, tmp_path):
    new = write_reviews(tmp_path / "new.jsonl")
    args = child_overrides(parent, new, **{"forgetting.ewc_lambda": 0, "forgetting.replay_fraction": 0, "training.max_steps": 1})
    train(None, args, parent=str(parent))
    with pytest.raises(DuplicateRunError):
        train(None, args, parent=str(parent))


def test_update_refusals_exit_2(parent, tiny_model_dir, tmp_path, monkeypatch, capsys):
    new = write_reviews(tmp_path / "new.jsonl")
    runs = str(parent.parent)

    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", parent, f"output.runs_dir={runs}")
    assert code == 2 and "needs the new rows to learn: add data.train=FILE" in err

    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", parent, f"data.train={new}", "method.r=16")
    assert code == 2 and "must keep the parent's adapter shape" in err and "method.r=8 -> 16" in err

    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", parent, f"data.train={new}", "method.name=dora")
    assert code == 2 and "method.name='lora' -> 'dora'" in err

    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", tmp_path / "nowhere", f"data.train={new}")
    assert code == 2 and "nowhere" in err

    with pytest.raises(ConfigError, match="replay_data=parent means the training split of the run this one continues"):
        train(None, tiny_overrides(tiny_model_dir, new, tmp_path / "r", **{"forgetting.replay_data": "parent",
                                                                           "forgetting.replay_fraction": 0.1}))

    code, _, err = run_cli(monkeypatch, capsys, "drift", "compare", parent)
    assert code == 2 and "is not an update" in err


def test_a_full_fine_tune_or_an_unfinished_run_cannot_be_continued(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    new = write_reviews(tmp_path / "new.jsonl")
    full = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"method.name": "full", "training.max_steps": 1}))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", full.run_dir, f"data.train={new}")
    assert code == 2 and "a full fine-tune has no adapter to continue" in err and "model.base=" in err

    lora = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"training.max_steps": 1}))
    info = json.loads((lora.run_dir / "run.json").read_text())
    (lora.run_dir / "run.json").write_text(json.dumps({**info, "status": "stopped-by-budget"}))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", lora.run_dir, f"data.train={new}")
    assert code == 2 and "is not a completed run with an adapter (status: stopped-by-budget)" in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == sorted([full.run_dir.name, lora.run_dir.name])

    ada = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"method.name": "adalora", "training.max_steps": 2}))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", ada.run_dir, f"data.train={new}")
    assert code == 2 and "AdaLoRA prunes its ranks on a schedule that ended in the parent" in err


def test_an_update_keeps_its_parents_base_and_config(parent, tiny_model_dir, tmp_path, monkeypatch, capsys):
    new = write_reviews(tmp_path / "new.jsonl")
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", parent, f"data.train={new}", f"model.base={other}")
    assert code == 2 and "the parent's adapter was trained on model.base=" in err and "Drop the model.base override" in err
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  max_steps: 2\n")
    code, _, err = run_cli(monkeypatch, capsys, "train", config, "--from", parent, f"data.train={new}")
    assert code == 2 and "--from starts from the parent run's config; pass overrides" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "--resume", parent, "--from", parent)
    assert code == 2 and "--resume continues a run with the config it was started with" in err


def test_a_parent_whose_base_model_is_gone(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    run = train(None, tiny_overrides(model, chat_file, tmp_path / "runs", **{"training.max_steps": 1})).run_dir
    shutil.rmtree(model)
    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", run, f"data.train={write_reviews(tmp_path / 'n.jsonl')}")
    assert code == 2 and "model.base" in err and str(model) in err
    assert not [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and p != run]  # refused before a run folder


def test_an_older_index_gains_the_parent_column(tmp_path):
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, path, name)")
    db.commit()
    db.close()
    index = RunIndex(tmp_path)
    index.upsert({"id": "r1", "path": "p", "name": "n", "parent": "r0"})
    assert index.runs()[0]["parent"] == "r0"


def test_runs_show_names_the_parent_and_the_comparison(parent, tmp_path, monkeypatch, capsys):
    new = write_reviews(tmp_path / "new.jsonl")
    child = train(None, child_overrides(parent, new, **{"training.max_steps": 1, "forgetting.ewc_lambda": 0,
                                                        "training.seed": 7}), parent=str(parent))
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "show", child.run_dir.name, "--runs-dir", parent.parent)
    assert code == 0 and f"update of run {parent.name} (train --from): gain" in out and "retention" in out
    (child.run_dir / "update.json").unlink()
    code, _, _ = run_cli(monkeypatch, capsys, "drift", "compare", child.run_dir, "--limit", "4")
    report = json.loads((child.run_dir / "update.json").read_text())
    assert code == 0 and report["gain"]["items"] == 4 and report["parent"] == parent.name


def test_a_parent_without_its_adapter_weights(parent, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "runs" / parent.name
    shutil.copytree(parent, copy)
    (copy / "adapter" / "adapter_model.safetensors").unlink()
    code, _, err = run_cli(monkeypatch, capsys, "train", "--from", copy, f"data.train={write_reviews(tmp_path / 'n.jsonl')}",
                           f"output.runs_dir={tmp_path / 'runs'}")
    assert code == 2 and "holds no adapter_model.safetensors; it cannot be continued" in err
