import json
import re
from collections import Counter

import pytest

from leantune.data import load_examples, load_splits
from leantune.data.builtin import load_sms_spam, stratified_split
from leantune.data import read_examples
from leantune.data.records import ChatExample
from leantune.data.tokenize import IGNORE, tokenize_chat, tokenize_examples
from leantune.errors import DataError


def test_sms_spam_is_the_real_collection():
    examples = load_sms_spam()
    counts = Counter(e.label for e in examples)
    assert counts == {"ham": 4220, "spam": 642}
    assert examples[0].messages[-1]["content"] in ("ham", "spam")
    assert "SMS" in examples[0].messages[0]["content"]


def test_stratified_split_keeps_label_shares_and_is_deterministic():
    examples = load_sms_spam()
    train, evals = stratified_split(examples, 200, seed=3)
    assert len(evals) == 200 and len(train) == len(examples) - 200
    spam = sum(e.label == "spam" for e in evals)
    assert spam == round(200 * 642 / 4862)
    again = stratified_split(examples, 200, seed=3)[1]
    assert [e.source for e in again] == [e.source for e in evals]
    assert not {e.source for e in train} & {e.source for e in evals}


def write_lines(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "d.jsonl:2: not valid JSON"),
        (json.dumps({"text": "x"}), "d.jsonl:2: this row's fields ['text'] do not match the file's format 'chat'"),
        ("[1, 2]", "d.jsonl:2: expected a JSON object, got a list"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "role 'robot'"),
        (json.dumps({"messages": [{"role": "user", "content": 3}]}), "content must be a string"),
        (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no assistant message"),
        (json.dumps({"messages": []}), "non-empty list"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path, [GOOD, bad])
    with pytest.raises(DataError, match=re.escape(message)):
        read_examples(path)


def test_empty_dataset(tmp_path):
    path = write_lines(tmp_path, ["", "  "])
    with pytest.raises(DataError, match="holds no examples"):
        read_examples(path)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(str(tmp_path / "missing.jsonl"))


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="neither a built-in dataset"):
        load_examples("sms-spamm")


def test_eval_size_larger_than_data(tmp_path):
    path = write_lines(tmp_path, [GOOD, GOOD])
    with pytest.raises(DataError, match="leaves no training examples"):
        load_splits(str(path), None, eval_size=5, seed=0)


def test_labels_cover_only_assistant_reply_and_end_of_turn(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = ChatExample(
        (
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "no thanks"},
        )
    )
    t = tokenize_chat(tok, example)
    trained = tok.decode([i for i, l in zip(t.input_ids, t.labels) if l != IGNORE])
    assert trained == "yes<|im_end|>no thanks<|im_end|>"
    assert all(l in (IGNORE, i) for i, l in zip(t.input_ids, t.labels))
    last = tokenize_chat(tok, example, last_turn_only=True)
    assert tok.decode([i for i in last.labels if i != IGNORE]) == "no thanks<|im_end|>"
    assert tokenize_chat(tok, example, train_on="last_assistant").labels == last.labels
    everything = tokenize_chat(tok, example, train_on="everything")
    assert everything.labels == everything.input_ids == t.input_ids


@pytest.mark.parametrize("policy", ["keep_end", "keep_start", "drop"])
def test_truncation_policies_are_counted_never_silent(tiny_model_dir, policy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = ChatExample(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}))
    long_prompt = ChatExample(({"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}))
    out, stats = tokenize_examples(tok, [short, long_prompt], max_seq_len=32, truncation=policy)
    assert stats.longest > 32 and all(len(e.input_ids) <= 32 for e in out)
    if policy == "keep_end":  # the answer and its end-of-turn token survive: the row still trains
        assert stats.truncated == 1 and stats.examples == 2
        assert tok.decode([t for t in out[1].labels if t != IGNORE]) == "ok<|im_end|>"
        assert out[1].input_ids == tokenize_chat(tok, long_prompt).input_ids[-32:]
    elif policy == "keep_start":  # the answer is cut off, so nothing is left to learn: dropped and counted
        assert stats.truncated == 1 and stats.dropped_no_labels == 1 and stats.examples == 1
    else:
        assert stats.dropped_too_long == 1 and stats.examples == 1


def test_plain_text_is_split_not_cut(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "the cat sat on the mat. " * 20}) + "\n")
    [example] = read_examples(path)
    assert example.kind == "text"
    whole = tokenize_examples(tok, [example], max_seq_len=10_000)[0][0]
    assert whole.labels[0] == IGNORE and whole.labels[1:] == whole.input_ids[1:] and whole.input_ids[-1] == tok.eos_token_id
    pieces, stats = tokenize_examples(tok, [example], max_seq_len=16)
    assert stats.split == 1 and stats.truncated == 0
    assert [t for p in pieces for t in p.input_ids] == whole.input_ids


def test_json_list_files_are_read_too(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([json.loads(GOOD), json.loads(GOOD)]))
    assert len(load_examples(str(path))) == 2
    path.write_text(json.dumps([json.loads(GOOD), {"text": "x"}]))
    with pytest.raises(DataError, match=r"d.json\[1\]: this row's fields"):
        load_examples(str(path))
    path.write_text(json.dumps(json.loads(GOOD)))
    with pytest.raises(DataError, match="must hold a list of rows"):
        load_examples(str(path))


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(GOOD.replace("hello", "h\xe9llo").encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_examples(path)


def test_every_row_format_normalises_to_the_same_chat(tmp_path):
    expected = (("user", "What is 2+2?"), ("assistant", "4"))
    rows = {
        "chat.jsonl": {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
        "sharegpt.jsonl": {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
        "alpaca.jsonl": {"instruction": "What is 2+2?", "input": "", "output": "4"},
        "pc.jsonl": {"prompt": "What is 2+2?", "completion": "4"},
    }
    for name, row in rows.items():
        path = tmp_path / name
        path.write_text(json.dumps(row) + "\n")
        (example,) = read_examples(path)
        assert tuple((m["role"], m["content"]) for m in example.messages) == expected, name
    alpaca = tmp_path / "alpaca2.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Translate", "input": "chat", "output": "cat", "system": "be brief"}) + "\n")
    (example,) = read_examples(alpaca)
    assert [m["content"] for m in example.messages] == ["be brief", "Translate\n\nchat", "cat"]


def test_csv_and_tsv_with_a_column_mapping(tmp_path):
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('question,answer\n"Capital of France, please?",Paris\nLargest planet?,Jupiter\n')
    examples = read_examples(csv_path, columns={"prompt": "question", "completion": "answer"})
    assert [e.answer for e in examples] == ["Paris", "Jupiter"]
    assert examples[0].messages[0]["content"] == "Capital of France, please?" and examples[1].source.endswith("qa.csv:3")
    tsv_path = tmp_path / "qa.tsv"
    tsv_path.write_text("prompt\tcompletion\nhi\thello\n")
    assert read_examples(tsv_path)[0].answer == "hello"


def test_csv_with_a_ragged_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,completion\nhi,hello\nonly one field\n")
    with pytest.raises(DataError, match=r"bad.csv:3: 1 fields where the header has 2"):
        read_examples(path)


def test_unknown_schema_says_how_to_map_columns(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n")
    with pytest.raises(DataError, match=r"q.jsonl:1: cannot tell the format.*data.columns"):
        read_examples(path)


def test_rows_must_share_the_first_rows_schema(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"instruction": "a", "output": "b"}) + "\n")
    with pytest.raises(DataError, match="mixed.jsonl:2: this row's fields .* format 'prompt_completion'"):
        read_examples(path)


def test_preference_pairs_normalise_but_are_not_sft_data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "p", "chosen": "good", "rejected": "bad"},
            {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
             "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = read_examples(path)
    assert first.kind == "preference" and first.answer == "good" and first.rejected == "bad"
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant"] and second.rejected == "no"
    with pytest.raises(DataError, match="pairs.jsonl.* preference pairs .* objective.name=dpo"):
        load_splits(str(path), None, eval_size=0, seed=0)


def test_explicit_format_reports_missing_fields(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "do it"}) + "\n")
    with pytest.raises(DataError, match="a.jsonl:1: field 'output' is missing or empty"):
        read_examples(path, fmt="alpaca")


def test_truncated_last_line(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text(GOOD + "\n" + GOOD[:30])
    with pytest.raises(DataError, match="cut.jsonl:2: not valid JSON .* cut off while being written"):
        read_examples(path)


def test_builtin_tweets_and_trivia():
    from leantune.data.builtin import load_trivia, load_tweets_sentiment

    tweets = load_tweets_sentiment()
    assert len(tweets) == 38_158
    assert set(Counter(e.label for e in tweets)) == {"negative", "neutral", "positive"}
    assert any("\ufffd" in e.messages[1]["content"] for e in tweets)  # the shipped broken bytes stay visible
    trivia = load_trivia()
    assert len(trivia) == 190 and trivia[0].answer == "Richard Nixon"


def test_data_list_command(monkeypatch, capsys):
    from test_cli import run_cli

    code, out, _ = run_cli(monkeypatch, capsys, "data", "list")
    assert code == 0
    for name in ("sms-spam", "38,158", "tweets-sentiment", "trivia", "CC BY 4.0"):
        assert name in out


def test_preview_marks_exactly_the_trained_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    from leantune.data.preview import preview_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = ChatExample(({"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}), "f.jsonl:1")
    (row,) = preview_rows(tok, [example], max_seq_len=8)
    assert [text for text, trained in row.segments if trained] == ["hello<|im_end|>"]
    assert "".join(text for text, _ in row.segments) == tok.decode(tokenize_chat(tok, example).input_ids)
    assert row.truncated_at == 8 and row.trained_tokens == tokenize_chat(tok, example).n_label_tokens
    ids = tokenize_chat(tok, example).input_ids
    assert row.dropped_where == "start" and row.dropped == tok.decode(ids[: len(ids) - 8])  # keep_end cuts the start
    (end,) = preview_rows(tok, [example], max_seq_len=8, truncation="keep_start")
    assert end.dropped_where == "end" and end.dropped == tok.decode(ids[8:])


def test_data_preview_command(monkeypatch, capsys, tmp_path, tiny_model_dir):
    from test_cli import run_cli

    path = tmp_path / "d.jsonl"
    path.write_text(GOOD + "\n")
    code, out, err = run_cli(monkeypatch, capsys, "data", "preview", path, "--model", tiny_model_dir, "-n", "1")
    assert code == 0, err
    assert "d.jsonl:1" in out and "hello" in out and "trained" in out
    code, _, err = run_cli(monkeypatch, capsys, "data", "preview", path, "--model", tiny_model_dir, "--train-on", "some")
    assert code == 2 and "--train-on 'some'" in err


def test_a_split_we_make_never_leaks_eval_prompts_into_training(tmp_path):
    rows = [chat_line(f"message {i % 10}", "ham") for i in range(40)]  # each prompt four times
    path = write_lines(tmp_path, rows)
    splits = load_splits(str(path), None, eval_size=3, seed=0)
    eval_prompts = {e.messages[0]["content"] for e in splits.eval}
    assert len(splits.eval) == 3 and not eval_prompts & {e.messages[0]["content"] for e in splits.train}
    assert splits.leaked_removed == 4 * len(eval_prompts) - 3 and len(splits.train) == 40 - 3 - splits.leaked_removed
    own_eval = tmp_path / "eval.jsonl"
    own_eval.write_text("\n".join(rows[:2]) + "\n")
    given = load_splits(str(path), str(own_eval), eval_size=0, seed=0)
    assert given.leaked_kept == 8 and len(given.train) == 40  # a user's own eval file: reported, not changed


def chat_line(user, reply):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})


def test_word_forms_are_free_text_answers_apart_from_the_general_suite():
    """The third quality task: one-word answers (exact match), from the analogy file's grammar sections only, so
    training on it never trains on the forgetting check's analogies (capitals, currency, family)."""
    from leantune.data.builtin import WORD_FORM_SECTIONS
    from leantune.evaluation.general import ANALOGY_SECTIONS, analogy_questions
    from leantune.evaluation.tasks import closed_answer_set

    examples = load_examples("word-forms")
    assert len(examples) == 10675
    assert all(len(ex.answer.split()) == 1 for ex in examples)
    assert closed_answer_set(examples) == ()  # free text: scored by exact match, not by picking a label
    sections = {ex.source.split(":")[1].split("[")[0] for ex in examples}
    assert sections == set(WORD_FORM_SECTIONS) and not sections & set(ANALOGY_SECTIONS)
    general = {q.prompt[-1]["content"].removeprefix("Complete the analogy with one word. ") for q in analogy_questions()}
    assert not general & {ex.messages[1]["content"] for ex in examples}
    held = load_splits("word-forms", None, 200, 0)
    assert len(held.eval) == 200 and load_splits("word-forms", None, 200, 0).eval == held.eval


def test_builtin_example_counts_are_cached_by_their_files(tmp_path, monkeypatch):
    """`data list` counts each built-in dataset once per installed file (path, size, mtime), then reads the count."""
    import dataclasses

    from leantune.data.builtin import BUILTIN_INFO, example_count

    trivia = BUILTIN_INFO["trivia"]
    count = example_count(trivia)
    assert count == len(trivia.load())
    calls = []
    counting = dataclasses.replace(trivia, load=lambda: calls.append(1) or [])
    assert example_count(counting) == count and not calls  # from the cache
    monkeypatch.setenv("LEANTUNE_HOME", str(tmp_path / "fresh-home"))
    assert example_count(counting) == 0 and calls == [1]  # no cache there: counted
