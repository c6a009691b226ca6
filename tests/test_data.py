import json
from collections import Counter

import pytest

from leantune.data import load_examples, load_splits
from leantune.data.builtin import load_sms_spam, stratified_split
from leantune.data.records import ChatExample, read_chat_jsonl
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
        (json.dumps({"text": "x"}), "d.jsonl:2: expected an object with a 'messages' list"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "role 'robot'"),
        (json.dumps({"messages": [{"role": "user", "content": 3}]}), "content must be a string"),
        (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no assistant message"),
        (json.dumps({"messages": []}), "non-empty list"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path, [GOOD, bad])
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        read_chat_jsonl(path)


def test_empty_dataset(tmp_path):
    path = write_lines(tmp_path, ["", "  "])
    with pytest.raises(DataError, match="holds no examples"):
        read_chat_jsonl(path)


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


def test_truncation_is_counted_never_silent(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = ChatExample(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}))
    long_prompt = ChatExample(({"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}))
    out, stats = tokenize_examples(tok, [short, long_prompt], max_seq_len=32)
    assert stats.truncated == 1 and stats.dropped_no_labels == 1 and stats.examples == 1
    assert len(out) == 1 and stats.longest > 32


def test_json_list_files_are_read_too(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([json.loads(GOOD), json.loads(GOOD)]))
    assert len(load_examples(str(path))) == 2
    path.write_text(json.dumps([json.loads(GOOD), {"text": "x"}]))
    with pytest.raises(DataError, match=r"d.json\[1\]: expected an object"):
        load_examples(str(path))
    path.write_text(json.dumps(json.loads(GOOD)))
    with pytest.raises(DataError, match="must hold a list of rows"):
        load_examples(str(path))


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(GOOD.replace("hello", "h\xe9llo").encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_chat_jsonl(path)
