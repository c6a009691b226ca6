"""Drift detection: the statistics hold their false-alarm rate on random halves of one set and find a real shift
(sms-spam prompts against tweets); `leantune drift check` end to end on the tiny model; bad input refused."""

import json

import numpy as np
import pytest
from conftest import chat_row, tiny_overrides
from test_cli import assert_user_error, run_cli

from leantune.data import load_examples
from leantune.drift import stats
from leantune.training.api import train


def _texts(name: str) -> list[str]:
    return [next(m["content"] for m in e.messages if m["role"] == "user").split("\n\n")[-1] for e in load_examples(name)]


def _bag_embedding(texts: list[str], dim: int = 32, seed: int = 0) -> np.ndarray:
    """A fixed random projection of word counts: stands in for a model's embedding in these model-free tests."""
    rng = np.random.default_rng(seed)
    table: dict[str, np.ndarray] = {}
    out = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        for w in stats.words(t):
            if w not in table:
                table[w] = rng.standard_normal(dim)
            out[i] += table[w]
        out[i] /= max(len(stats.words(t)), 1)
    return out


def _signals(ref: list[str], cur: list[str], vocabulary: set[str], seed: int) -> list:
    emb = _bag_embedding(ref + cur)
    return [stats.length([len(t) for t in ref], [len(t) for t in cur]),
            stats.oov(vocabulary, ref, cur),
            stats.classifier(ref, cur, permutations=20, seed=seed, folds=3),
            stats.mmd(emb[:len(ref)], emb[len(ref):], permutations=100, seed=seed)]


def test_random_halves_of_one_set_rarely_flag_drift():
    texts = _texts("sms-spam")
    vocabulary = {w for t in texts[:2000] for w in stats.words(t)}
    pool = texts[2000:]
    flagged = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(pool), 160, replace=False)
        ref, cur = [pool[i] for i in pick[:80]], [pool[i] for i in pick[80:]]
        signals = _signals(ref, cur, vocabulary, seed)
        stats.holm(signals, alpha=0.05)
        flagged += any(s.drifted for s in signals)
    assert flagged <= 3, f"{flagged} of 20 same-distribution comparisons flagged at alpha 0.05"


def test_a_real_shift_is_found_and_explained():
    sms, tweets = _texts("sms-spam"), _texts("tweets-sentiment")
    vocabulary = {w for t in sms[:2000] for w in stats.words(t)}
    ref, cur = sms[2000:2080], tweets[:80]
    signals = _signals(ref, cur, vocabulary, 0)
    stats.holm(signals, alpha=0.05)
    by_name = {s.name: s for s in signals}
    assert by_name["classifier"].drifted and by_name["mmd"].drifted
    assert by_name["classifier"].detail["auc"] > 0.8
    assert any("@" in t or "http" in t or "#" in t for t in by_name["classifier"].detail["most_unlike_reference"])


def test_holm_and_minimum_effect():
    small = [stats.Signal("a", 0, 0.001, 0.001, 0.01), stats.Signal("b", 0, 0.02, 0.5, 0.1),
             stats.Signal("c", 0, 0.04, 0.5, 0.1)]
    stats.holm(small, 0.05)
    assert [round(s.p_adjusted, 3) for s in small] == [0.003, 0.04, 0.04]
    assert [s.drifted for s in small] == [False, True, True]  # a: significant but trivial
    assert stats.psi(np.arange(100), np.arange(100)) < 0.01 and stats.psi(np.arange(100), np.arange(100) + 60) > 1


@pytest.fixture(scope="module")
def drift_run(tiny_model_dir, tmp_path_factory):
    from conftest import write_spam_chat

    root = tmp_path_factory.mktemp("drift")
    data = write_spam_chat(root / "train.jsonl", rows=120)
    result = train(None, tiny_overrides(tiny_model_dir, data, root / "runs", **{"data.eval_size": 40,
                                                                                "training.max_steps": 4}))
    return result.run_dir, root


def test_drift_check_end_to_end(drift_run, monkeypatch, capsys):
    run_dir, root = drift_run
    from leantune.evaluation.tasks import held_out_examples
    from leantune.runs.rundir import open_run_dir

    same = root / "same.jsonl"  # the held-out rows themselves, labelled: nothing has moved
    same.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n"
                            for e in held_out_examples(open_run_dir(run_dir).config())))
    shifted = root / "shifted.jsonl"
    shifted.write_text("".join(json.dumps({"messages": [{"role": "user", "content":
                                                         f"Please write a long poem about the sea and the wind number {i}"}]})
                               + "\n" for i in range(40)))
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "check", str(run_dir), "--current", str(shifted),
                           "--permutations", "50", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["verdict"] == "drift" and report["current_rows"] == 40 and report["reference_rows"] == 40
    names = {s["name"] for s in report["signals"]}
    assert names == {"length", "oov", "classifier", "mmd", "loss", "task"} - {"task"}
    info = json.loads((run_dir / "run.json").read_text())
    assert info["drift"]["verdict"] == "drift"
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "show", str(run_dir), "--runs-dir", str(root / "runs"))
    assert code == 0 and "drift: drift (" in out and "flagged by" in out
    assert "## Drift" in (run_dir / "report.md").read_text() and (run_dir / "drift_lengths.png").is_file()
    code, out, _ = run_cli(monkeypatch, capsys, "drift", "check", str(run_dir), "--current", str(same),
                           "--permutations", "50", "--json")
    report = json.loads(out)
    assert "task" in {s["name"] for s in report["signals"]}  # labelled rows: the task metric is checked too
    assert code == 0 and report["verdict"] == "no drift", report


def test_drift_refusals(drift_run, tiny_model_dir, tmp_path, monkeypatch, capsys):
    run_dir, root = drift_run
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text("".join(json.dumps(chat_row(f"q{i}", "a")) + "\n" for i in range(5)))
    code, _, err = run_cli(monkeypatch, capsys, "drift", "check", str(run_dir), "--current", str(tiny))
    assert_user_error(code, err, "needs at least 30")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_cli(monkeypatch, capsys, "drift", "check", str(run_dir), "--current", str(empty))
    assert_user_error(code, err, "has 0 prompts; a drift check needs at least 30")
    code, _, err = run_cli(monkeypatch, capsys, "drift", "check", str(run_dir), "--current", "serve-log:bot",
                           "--runs-dir", str(tmp_path))
    assert_user_error(code, err, "No request log for 'bot'")
    code, _, err = run_cli(monkeypatch, capsys, "drift", "check", str(run_dir), "--current", str(tiny), "--alpha", "2")
    assert_user_error(code, err, "--alpha 2.0 must be between 0 and 1")
    from conftest import write_spam_chat

    no_eval = train(None, tiny_overrides(tiny_model_dir, write_spam_chat(tmp_path / "d.jsonl"), tmp_path / "runs",
                                         **{"data.eval_size": 0, "training.max_steps": 2}))
    current = write_spam_chat(tmp_path / "current.jsonl", rows=40)
    code, _, err = run_cli(monkeypatch, capsys, "drift", "check", str(no_eval.run_dir), "--current", str(current))
    assert_user_error(code, err, "held out no examples")
    odd = tmp_path / "odd.jsonl"
    odd.write_text("".join(json.dumps({"id": i, "score": 3}) + "\n" for i in range(40)))
    code, _, err = run_cli(monkeypatch, capsys, "drift", "check", str(run_dir), "--current", str(odd))
    assert_user_error(code, err, "odd.jsonl:1: no prompt found; give 'messages', 'prompt', 'instruction' or 'text'")
