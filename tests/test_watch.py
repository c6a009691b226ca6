"""`leantune drift watch POLICY`: one decision per invocation - keep on no drift or too little data, update and
promote through the gate on drift, keep production (exit 1) when the gate fails; decisions logged; bad policies
and overlapping invocations refused with exit 2."""

import fcntl
import json

import pytest
import yaml

from conftest import chat_row, tiny_overrides
from leantune import train
from leantune.runs.index import RunIndex
from leantune.runs.lookup import find_run
from leantune.runs.registry import promote, push
from test_cli import assert_user_error, run_cli


@pytest.fixture(scope="module")
def production(tiny_model_dir, tmp_path_factory):
    from conftest import write_spam_chat

    root = tmp_path_factory.mktemp("watch")
    data = write_spam_chat(root / "train.jsonl", rows=120)
    run = train(None, tiny_overrides(tiny_model_dir, data, root / "runs", **{"data.eval_size": 40})).run_dir
    index = RunIndex(root / "runs")
    promote(index, "bot", push(index, index.find(run.name), "bot"), "production")
    new = root / "reviews.jsonl"  # the shift: another kind of prompt, labelled
    new.write_text("".join(json.dumps(chat_row(f"Review {i}: the plot was {'great' if i % 2 else 'dull'}. Good or bad?",
                                               "good" if i % 2 else "bad")) + "\n" for i in range(120)))
    return run, root, new


def write_policy(root, name, **fields):
    policy = {"production": "bot", "runs_dir": str(root / "runs"), "min_rows": 30, "permutations": 50,
              "train": {"training.max_steps": 3, "forgetting.ewc_examples": 8}, **fields}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def decisions(root):
    return [json.loads(line) for line in (root / "runs" / "watch" / "bot.jsonl").read_text().splitlines()]


def test_watch_keeps_production_without_drift_or_data(production, monkeypatch, capsys):
    run, root, _ = production
    from leantune.evaluation.tasks import held_out_examples
    from leantune.runs.rundir import open_run_dir

    same = root / "same.jsonl"
    same.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n"
                            for e in held_out_examples(open_run_dir(run).config())))
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "watch", write_policy(root, "same", current=str(same)))
    decision = json.loads(out)
    assert code == 0 and decision["action"] == "keep" and decision["drift"] == "no drift"

    few = root / "few.jsonl"
    few.write_text("".join(json.dumps(chat_row(f"q{i}", "a")) + "\n" for i in range(5)))
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "watch", write_policy(root, "few", current=str(few)))
    assert code == 0 and "not enough data: 5 current prompts" in json.loads(out)["reasons"][0]
    assert [d["action"] for d in decisions(root)][-2:] == ["keep", "keep"]


def test_watch_gate_refuses_then_promotes(production, monkeypatch, capsys):
    run, root, new = production
    index = RunIndex(root / "runs")

    # drift, an update, and a gate it cannot pass: production stays, exit 1
    strict = write_policy(root, "strict", current=str(new), new_data=str(new), gate={"min_gain": 1000})
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "watch", strict)
    decision = json.loads(out)
    assert code == 1 and decision["action"] == "alert" and decision["drift"] == "drift", decision
    assert "gate failed, production kept" in decision["reasons"][0] and "not above 1000" in decision["reasons"][0]
    assert find_run("bot@production", root / "runs").run.path == run
    child = index.find(decision["child"])
    assert child["parent"] == run.name

    # the same update again is not paid for twice
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "watch", strict)
    assert code == 1 and "already trained" in json.loads(out)["reasons"][0]

    # a gate that lets anything through: the (new) update is promoted
    lax = write_policy(root, "lax", current=str(new), new_data=str(new),
                       gate={"min_gain": -1000, "retention_margin": 1000, "forgetting_margin": 1000},
                       train={"training.max_steps": 3, "forgetting.ewc_examples": 8, "training.seed": 5})
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "watch", lax)
    decision = json.loads(out)
    assert code == 0 and decision["action"] == "promoted" and decision["version"] == 2, decision
    assert find_run("bot@production", root / "runs").run.path.name == decision["child"]

    # production now knows these prompts: no drift, nothing to do
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "watch", lax)
    assert code == 0 and json.loads(out)["drift"] == "no drift"


def test_watch_without_new_data_only_alerts(production, monkeypatch, capsys):
    _, root, _ = production
    poems = root / "poems.jsonl"  # unlike what production (the first model, or an update on reviews) was tuned for
    poems.write_text("".join(json.dumps({"prompt": f"Please write a long poem about the sea and the wind, number {i}"})
                             + "\n" for i in range(40)))
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "watch", write_policy(root, "detect", current=str(poems)))
    assert code == 1 and json.loads(out)["reasons"] == ["drift found and the policy names no new_data to update on"]


def test_watch_refusals(production, tmp_path, monkeypatch, capsys):
    _, root, new = production
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"production": "bot", "current": str(new), "budget": 3}))
    code, _, err = run_cli(monkeypatch, capsys, "drift", "watch", bad)
    assert_user_error(code, err, "budget: Extra inputs are not permitted", "Keys: production, current")
    code, _, err = run_cli(monkeypatch, capsys, "drift", "watch", tmp_path / "none.yaml")
    assert_user_error(code, err, "none.yaml: cannot be read")
    code, _, err = run_cli(monkeypatch, capsys, "drift", "watch",
                           write_policy(root, "nobody", production="nobody", current=str(new)))
    assert code == 2 and "nobody" in err
    policy = write_policy(root, "locked", current=str(new))
    with open(root / "runs" / "watch" / "bot.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run_cli(monkeypatch, capsys, "drift", "watch", policy)
    assert_user_error(code, err, "Another `drift watch` for bot is running")
