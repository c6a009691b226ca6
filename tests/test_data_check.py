"""`data check` and `data clean`, and the tolerant reader under them: every malformed input gives file:line and
what to do, never a traceback; every finding is counted with the rows it is in."""

import json
import os

import pytest

from leantune.data import read_examples
from leantune.data.check import check_dataset
from leantune.data.clean import clean_file
from leantune.data.rows import scan_rows
from leantune.errors import DataError
from test_cli import run_cli


def chat(user, reply, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return json.dumps({"messages": messages})


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


STORY = ("Tell me a story about a dragon who lived high in the misty mountains, guarded a hoard of gold and old books, "
         "slept through the long winters, woke every spring hungry and angry, and flew down to the villages in the valley "
         "below to frighten the farmers, who left out sheep and bread and barrels of apple cider for it")


@pytest.fixture
def messy(tmp_path):
    return write(tmp_path, "messy.jsonl", [
        chat("What is the capital of France?", "Paris"),                        # 1
        chat("What is the capital of France?", "Lyon"),                         # 2 conflict with 1
        chat("  What is the capital of France?", "Paris  "),                    # 3 exact duplicate of 1 once trimmed
        chat(STORY, "Once upon a time there was a dragon with a great hoard."),  # 4
        chat(STORY.replace("cider", "juice") + ".", "Once upon a time there was a dragon with a great hoard!"),  # 5 near duplicate of 4
        "{broken",                                                               # 6 unreadable
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                 {"role": "assistant", "content": "c"}]}),        # 7 roles
        json.dumps({"prompt": "a", "completion": "b"}),                          # 8 schema differs
        chat("Mail john.doe@example.com or call +44 7700 900123", "ok"),        # 9 personal data
        chat("donâ€™t do that", "fine"),                                         # 10 mojibake
        json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}),  # 11 fields
        chat("Where is the lost \ufffd character?", "gone"),                    # 12 replacement char
    ])


def test_check_finds_each_kind_of_problem_with_its_rows(messy):
    report = check_dataset(str(messy))
    found = {f.code: f for f in report.sorted_findings()}
    expected = {
        "unreadable": ["messy.jsonl:6"], "roles": ["messy.jsonl:7"], "schema": ["messy.jsonl:8"], "fields": ["messy.jsonl:11"],
        "exact_duplicates": ["messy.jsonl:3"], "near_duplicates": ["messy.jsonl:5"], "conflicts": ["messy.jsonl:2"],
        "personal_data": ["messy.jsonl:9"], "mojibake": ["messy.jsonl:10"], "replacement_chars": ["messy.jsonl:12"],
    }
    assert set(found) == set(expected)
    for code, rows in expected.items():
        assert found[code].count == len(rows), code
        assert [r.split(" ")[0].split("/")[-1] for r in found[code].rows] == rows, code
    assert "= " in found["exact_duplicates"].rows[0] and "messy.jsonl:1" in found["exact_duplicates"].rows[0]
    assert "messy.jsonl:4" in found["near_duplicates"].rows[0]
    assert "email/phone" in found["personal_data"].rows[0]
    assert report.rows == 12 and report.examples == 9 and report.errors == 4 and report.warnings == 6
    assert report.formats == {"chat": 8, "prompt_completion": 1}


def test_near_duplicate_threshold_is_configurable(messy):
    assert 0.8 <= float(check_dataset(str(messy)).findings["near_duplicates"].rows[0].split("(")[-1][:-1]) < 0.97
    assert "near_duplicates" not in check_dataset(str(messy), near_threshold=0.97).findings
    with pytest.raises(DataError, match="near-dup-threshold"):
        check_dataset(str(messy), near_threshold=1.5)


def test_check_cli_exit_codes_and_json(messy, tmp_path, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "data", "check", messy, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["errors"] == 4 and {f["severity"] for f in report["findings"]} == {"error", "warning"}
    assert all(f["hint"] and f["title"] for f in report["findings"])
    good = write(tmp_path, "good.jsonl", [chat(f"question {i} about a topic", f"answer {i}") for i in range(30)])
    code, out, _ = run_cli(monkeypatch, capsys, "data", "check", good)
    assert code == 0 and "no errors" in out
    code, _, err = run_cli(monkeypatch, capsys, "data", "check", tmp_path / "missing.jsonl")
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(monkeypatch, capsys, "data", "check", good, "--seq-len", "512")
    assert code == 2 and "--seq-len needs --model" in err
    code, _, err = run_cli(monkeypatch, capsys, "data", "check", good, "--column", "prompt")
    assert code == 2 and "OURS=THEIRS" in err


def test_token_lengths_padding_and_over_long_rows(tmp_path, tiny_model_dir, monkeypatch, capsys):
    lines = [chat("short " * (i % 7 + 1), "yes") for i in range(40)] + [chat("long " * 300, "no")]
    path = write(tmp_path, "lengths.jsonl", lines)
    from transformers import AutoTokenizer

    report = check_dataset(str(path), tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), seq_len=64)
    assert report.tokens.max > 64 >= report.tokens.p95
    assert report.findings["too_long"].count == 1 and "lengths.jsonl:41" in report.findings["too_long"].rows[0]
    assert 0 < report.padding["packed"] < report.padding["padded"] < 1
    code, out, _ = run_cli(monkeypatch, capsys, "data", "check", path, "--model", tiny_model_dir, "--seq-len", "64")
    assert code == 0 and "tokens p50" in out and "with packing" in out


def test_label_balance_of_classification_style_data(tmp_path):
    lines = [chat(f"message number {i} here", "ham" if i % 10 else "spam") for i in range(50)]
    report = check_dataset(str(write(tmp_path, "labels.jsonl", lines)))
    assert report.labels == {"ham": 45, "spam": 5}
    assert report.findings["label_imbalance"].count == 1 and "90.0%" in report.findings["label_imbalance"].rows[0]
    free_form = [chat(f"q{i}", f"a different answer {i}") for i in range(50)]
    assert check_dataset(str(write(tmp_path, "free.jsonl", free_form))).labels is None


def test_train_eval_overlap_exact_and_near(tmp_path, monkeypatch, capsys):
    train = write(tmp_path, "train.jsonl", [chat("What is two plus two?", "four"), chat(STORY, "A dragon."),
                                             chat("Name a colour of the sky.", "blue")])
    evals = write(tmp_path, "eval.jsonl", [chat("What is two plus two?", "4"), chat(STORY + " too", "A dragon.")])
    report = check_dataset(str(train), str(evals))
    assert report.findings["eval_overlap"].rows == [f"{train}:1 ~ {evals}:1"]
    assert report.findings["eval_near_overlap"].count == 1 and report.findings["eval_near_overlap"].rows[0].startswith(f"{train}:2")
    code, out, _ = run_cli(monkeypatch, capsys, "data", "check", train, "--eval", evals, "--json")
    assert code == 1 and json.loads(out)["eval_examples"] == 2


def test_builtin_tweets_have_the_problems_check_is_for():
    report = check_dataset("tweets-sentiment")
    assert report.examples == 38_158 and report.errors == 0
    for code in ("exact_duplicates", "near_duplicates", "conflicts", "replacement_chars"):
        assert report.findings[code].count > 0, code
    assert set(report.labels) == {"negative", "neutral", "positive"}


def test_clean_writes_clean_and_rejected_files_and_is_idempotent(messy, tmp_path):
    before = messy.read_bytes()
    out = tmp_path / "out" / "clean.jsonl"
    summary = clean_file(messy, out)
    assert messy.read_bytes() == before  # never touches the input
    assert summary.rows == 12 and summary.kept == 6
    assert dict(summary.dropped) == {"unreadable": 1, "roles": 1, "schema": 1, "fields": 1, "exact_duplicates": 1,
                                     "near_duplicates": 1}
    rejected = [json.loads(line) for line in (tmp_path / "out" / "clean.rejected.jsonl").read_text().splitlines()]
    assert [r["where"].split("/")[-1] for r in rejected] == ["messy.jsonl:3", "messy.jsonl:5", "messy.jsonl:6",
                                                             "messy.jsonl:7", "messy.jsonl:8", "messy.jsonl:11"]
    assert rejected[2]["raw"] == "{broken\n" and rejected[0]["row"]["messages"][1]["content"] == "Paris  "
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [m["content"] for row in kept for m in row["messages"]]
    assert "don’t do that" in texts and not any(t != t.strip() for t in texts)  # mojibake repaired, whitespace trimmed
    assert check_dataset(str(out)).errors == 0
    again = clean_file(out, tmp_path / "again.jsonl")
    assert again.kept == 6 and not again.dropped and again.repaired == 0
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()


def test_clean_refuses_to_overwrite_its_input_and_needs_jsonl(messy, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "data", "clean", messy, "-o", messy)
    assert code == 2 and "would overwrite the input" in err
    code, _, err = run_cli(monkeypatch, capsys, "data", "clean", messy, "-o", tmp_path / "x.csv")
    assert code == 2 and ".jsonl" in err
    code, out, _ = run_cli(monkeypatch, capsys, "data", "clean", messy, "-o", tmp_path / "c.jsonl")
    assert code == 0 and "kept 6" in out and "c.rejected.jsonl" in out


def test_clean_keeps_the_old_output_when_it_fails(messy, tmp_path, monkeypatch):
    out = tmp_path / "clean.jsonl"
    out.write_text("the previous good output\n")
    import leantune.data.clean as clean_module

    def boom(value):
        raise RuntimeError("disk full")

    monkeypatch.setattr(clean_module, "fix_row", boom)
    with pytest.raises(RuntimeError):
        clean_file(messy, out)
    assert out.read_text() == "the previous good output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.jsonl", "messy.jsonl"]  # no temp files left


def test_clean_csv_keeps_its_columns_and_maps_names(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat is 2+2? ,4\nWhat is 2+2?,4\nbad,row,extra\n", encoding="utf-8")
    summary = clean_file(path, tmp_path / "qa.jsonl", columns={"prompt": "question", "completion": "answer"})
    assert summary.kept == 1 and dict(summary.dropped) == {"exact_duplicates": 1, "unreadable": 1}
    assert json.loads((tmp_path / "qa.jsonl").read_text()) == {"question": "What is 2+2?", "answer": "4"}


# ---------------------------------------------------------------- malformed inputs, one test each


def messages_of(path, **kw):
    return read_examples(path, **kw)


def test_invalid_utf8_names_the_line_and_check_goes_on(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(chat("ok", "fine").encode() + b"\n" + b'{"messages": "\xff\xfe"}\n' + chat("also", "fine").encode() + b"\n")
    with pytest.raises(DataError, match=r"bytes.jsonl:2: not UTF-8 .* Re-encode"):
        messages_of(path)
    report = check_dataset(str(path))
    assert report.examples == 2 and report.findings["unreadable"].rows[0].split("/")[-1].startswith("bytes.jsonl:2")


def test_a_json_array_where_an_object_was_expected(tmp_path):
    path = write(tmp_path, "arr.jsonl", [chat("a", "b"), "[1, 2, 3]"])
    with pytest.raises(DataError, match=r"arr.jsonl:2: expected a JSON object, got a list"):
        messages_of(path)


def test_a_missing_assistant_turn(tmp_path):
    path = write(tmp_path, "noreply.jsonl", [json.dumps({"messages": [{"role": "user", "content": "hello?"}]})])
    with pytest.raises(DataError, match=r"noreply.jsonl:1: no assistant message"):
        messages_of(path)


def test_roles_out_of_order(tmp_path):
    late_system = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                                           {"role": "assistant", "content": "b"}]})
    trailing_user = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                             {"role": "user", "content": "c"}]})
    for line, message in ((late_system, "system message after the conversation started"), (trailing_user, "ends with a user turn")):
        with pytest.raises(DataError, match=message):
            messages_of(write(tmp_path, "r.jsonl", [line]))


def test_an_empty_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="holds no examples"):
        messages_of(path)
    code, _, err = run_cli(monkeypatch, capsys, "data", "check", path)
    assert code == 2 and "holds no rows" in err


def test_a_csv_with_a_ragged_row_is_reported_and_skipped_by_check(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("prompt,completion\na,b\nc,d,e\nf,g\n")
    with pytest.raises(DataError, match=r"r.csv:3: 3 fields where the header has 2"):
        messages_of(path)
    assert check_dataset(str(path)).examples == 2


def test_a_100_mb_single_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(chat("fine", "row").encode() + b"\n")
        f.write(b'{"text": "' + b"x" * (100 * 2**20) + b'"}\n')
        f.write(chat("after", "it").encode() + b"\n")
    rows = list(scan_rows(path))
    assert [r.problem is None for r in rows] == [True, False, True]
    assert "huge.jsonl:2" == rows[1].where.split("/")[-1] and "100 MiB" in rows[1].problem and "line breaks" in rows[1].problem
    assert len(rows[1].raw) <= 10_000
    with pytest.raises(DataError, match=r"huge.jsonl:2: this row is 100 MiB"):
        messages_of(path)
    os.remove(path)


def test_parquet_rows_stream_in_with_their_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    table = pa.table({"instruction": ["Add", "Greet"], "input": ["2 and 2", ""], "output": ["4", "hello"]})
    pq.write_table(table, path)
    first, second = messages_of(path)
    assert first.messages[0]["content"] == "Add\n\n2 and 2" and second.answer == "hello"
    assert second.source.endswith("d.parquet[1]")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        messages_of(broken)
