"""Evaluation: scoring paths agree with each other, metrics and the bootstrap behave, tasks refuse metrics that
do not fit, and `leantune eval` / eval.after_train write what they claim, tuned and base on the same items."""

import json
import shutil

import pytest

from conftest import chat_row, tiny_overrides
from leantune.data.records import Example
from leantune.data.tokenize import end_of_turn_ids, tokenize_chat
from leantune.evaluation.metrics import exact_match, normalise_answer, paired_bootstrap, token_f1
from leantune.evaluation.tasks import MetricError, resolve_task
from leantune.models.loading import load_base
from leantune import train
from test_cli import assert_user_error, run_cli


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_base(str(tiny_model_dir), "float32")


def qa(question, answer):
    return Example(({"role": "user", "content": question}, {"role": "assistant", "content": answer}))


QUESTIONS = [("What is the capital of France?", ["Paris", "Rome is the answer to this", "Berlin"]),
             ("Hi", ["hello there my good friend", "yo"]),
             ("Name a colour used on many flags around the world", ["red", "blue", "green and white and gold"]),
             ("2+2?", ["4", "five", "it is twenty two"])]


@pytest.mark.parametrize("per_token", [False, True])
def test_shared_prompt_scores_equal_scoring_every_row_whole(tiny, per_token):
    from leantune.evaluation.multiple_choice import Question, answer_tokens_only, choice_scores
    from leantune.evaluation.scoring import score_rows

    eot = end_of_turn_ids(tiny.tokenizer)
    questions = [Question(({"role": "user", "content": q},), tuple(c), 0) for q, c in QUESTIONS]
    rows = [tokenize_chat(tiny.tokenizer, qa(q, c), eot, last_turn_only=True) for q, cs in QUESTIONS for c in cs]
    if per_token:  # a mean per token scores the answer's own tokens (see choice_scores)
        rows = [answer_tokens_only(row, eot) for row in rows]
    whole = score_rows(tiny.model, tiny.tokenizer.pad_token_id, rows, 16, per_token=per_token).tolist()
    for batch in (1, 3, 16):  # prompts and replies split across batches in different ways
        shared = [s for group in choice_scores(tiny.model, tiny.tokenizer, questions, batch, per_token) for s in group]
        assert shared == pytest.approx(whole, abs=1e-4)


def test_a_mean_per_token_scores_the_answer_without_its_end_of_turn(tiny):
    """The end of turn would be a large share of a one-word answer's mean and measures stopping, not knowing."""
    from leantune.data.tokenize import IGNORE
    from leantune.evaluation.multiple_choice import Question, choice_rows

    eot = end_of_turn_ids(tiny.tokenizer)
    question = Question(({"role": "user", "content": "2+2?"},), ("four", "it is twenty two"), 0)
    for whole, answer in zip(choice_rows(tiny.tokenizer, question, eot), choice_rows(tiny.tokenizer, question, eot, False)):
        scored = [t for t, label in zip(answer.input_ids, answer.labels) if label != IGNORE]
        assert tiny.tokenizer.decode(scored).strip() in question.choices
        assert not set(scored) & eot and set(t for t, lab in zip(whole.input_ids, whole.labels) if lab != IGNORE) & eot
        assert answer.input_ids == whole.input_ids  # the same tokens are run, fewer are scored


def test_batched_greedy_answers_equal_one_at_a_time(tiny):
    from leantune.evaluation.generation import greedy_answers

    examples = [qa(q, c[0]) for q, c in QUESTIONS]
    together = greedy_answers(tiny.model, tiny.tokenizer, examples, max_new_tokens=6, batch_size=4)
    alone = [greedy_answers(tiny.model, tiny.tokenizer, [ex], max_new_tokens=6, batch_size=1)[0] for ex in examples]
    assert together == alone


def test_answer_metrics():
    assert normalise_answer("  The Eiffel   Tower! ") == "eiffel tower"
    assert exact_match("Paris.", "paris") == 1.0 and exact_match("Paris, France", "Paris") == 0.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("Rome", "Paris") == 0.0


def test_paired_bootstrap_separates_a_real_difference_from_noise():
    same = [1, 0, 1, 1, 0] * 20
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    better = [1] * 90 + [0] * 10
    worse = [1] * 50 + [0] * 50
    mean, lo, hi = paired_bootstrap(better, worse)
    assert mean == pytest.approx(0.4) and 0 < lo < mean < hi
    noisy_a = [1, 0] * 10
    noisy_b = [0, 1] * 9 + [1, 1]
    _, lo, hi = paired_bootstrap(noisy_a, noisy_b)
    assert lo < 0 < hi


def test_analogies_come_from_the_gensim_file_with_same_section_distractors():
    from leantune.evaluation.general import ANALOGY_SECTIONS, analogy_questions

    questions = analogy_questions()
    assert questions == analogy_questions() and len(questions) == 60 * len(ANALOGY_SECTIONS)
    capitals = [q for q in questions if q.source.endswith("capital-common-countries")]
    assert capitals and all(len(set(q.choices)) == 4 for q in questions)
    from leantune.data.builtin import analogy_file

    lines = set(analogy_file().read_text().splitlines())
    for q in questions[::17]:  # each question is a line of the file, its fourth word the right choice
        words = q.prompt[0]["content"].removeprefix("Complete the analogy with one word. ").split()
        assert f"{words[0]} {words[3]} {words[5]} {q.choices[q.correct]}" in lines
    family = [q for q in questions if q.source.endswith("family")]
    assert all(c[0].islower() for q in family for c in q.choices)  # family words, not capitals, as distractors


def test_metrics_that_do_not_fit_the_data_are_refused(tmp_path):
    free = tmp_path / "free.jsonl"
    free.write_text("".join(json.dumps(chat_row(f"Tell me fact {i}", f"Fact number {i} is unique")) + "\n" for i in range(30)))
    with pytest.raises(MetricError, match="closed answer set .* 30 different answers in 30 rows"):
        resolve_task(str(free), ("accuracy",))
    assert resolve_task(str(free)).metrics == ("loss",)
    assert resolve_task(str(free), ("exact_match", "token_f1")).metrics == ("exact_match", "token_f1")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "What."}) + "\n")
    with pytest.raises(MetricError, match="preference pairs .* preference_accuracy"):
        resolve_task(str(pairs), ("exact_match",))
    assert resolve_task(str(pairs)).metrics == ("preference_accuracy",)
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "Plain prose for continued pretraining."}) + "\n")
    with pytest.raises(MetricError, match="plain text .* only loss"):
        resolve_task(str(text), ("accuracy",))
    with pytest.raises(MetricError, match="multiple choice only"):
        resolve_task("analogies", ("exact_match",))
    with pytest.raises(MetricError, match="Unknown metric 'bleu'"):
        resolve_task(str(free), ("bleu",))
    with pytest.raises(MetricError, match="preference_accuracy needs preference pairs"):
        resolve_task(str(free), ("preference_accuracy",))


def test_time_box_scores_a_shared_random_sample(tiny):
    from leantune.evaluation.runner import Contender, Settings, evaluate_task
    from contextlib import nullcontext

    import copy

    import torch

    task = resolve_task("analogies")
    other = copy.deepcopy(tiny.model)
    with torch.no_grad():  # a different model: its answers differ from the base's
        for p in other.parameters():
            p.add_(0.5 * torch.randn_like(p))
    contenders = [Contender("base", tiny.model, nullcontext), Contender("tuned", other, nullcontext)]
    boxed = evaluate_task(task, contenders, tiny.tokenizer, Settings(budget_s=0.0, min_items=32))
    assert boxed.n == 32 and boxed.available == 240
    # the box's 32 items are the same random sample for both models: the first 32 of the task's fixed shuffle
    first_32 = evaluate_task(task, contenders, tiny.tokenizer, Settings(limit=32))
    for name in ("base", "tuned"):
        assert boxed.items[name] == first_32.items[name]
    assert boxed.items["base"] != boxed.items["tuned"]


def test_after_train_evaluation_and_leantune_eval(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{"eval.after_train": True, "eval.min_items": 16}))
    run = result.run_dir
    saved = json.loads((run / "eval.json").read_text())
    assert saved["models"] == ["base", "tuned"]
    by_task = {t["task"]: t for t in saved["tasks"]}
    assert set(by_task) == {"held-out", "trivia", "analogies"}
    assert by_task["held-out"]["n"] == 8  # the run's 8 held-out examples, all of them
    held_loss = next(m for m in by_task["held-out"]["metrics"] if m["metric"] == "loss")
    assert held_loss["scores"]["tuned"] == pytest.approx(result.eval_loss, rel=1e-5)  # same examples, same loss
    assert held_loss["scores"]["tuned"] < held_loss["scores"]["base"]
    assert by_task["trivia"]["n"] == 16 < by_task["trivia"]["available"]  # budget spent: the minimum
    f = saved["forgetting"]
    assert f["n"] == 32 and f["ci"][0] <= f["points"] <= f["ci"][1] and f["tasks"] == ["trivia", "analogies"]
    report = (run / "report.md").read_text()
    assert "## Evaluation" in report and "Forgetting (base - tuned on the general suite)" in report

    # the CLI, every item of the named task, JSON out; a custom task set does not replace eval.json
    code, out, err = run_cli(monkeypatch, capsys, "eval", run, "--task", chat_file, "--metric", "exact_match",
                             "--metric", "accuracy", "--json")
    assert code == 0, err
    data = json.loads(out)
    task = data["tasks"][0]
    assert task["n"] == task["available"] == 48 and [m["metric"] for m in task["metrics"]] == ["exact_match", "accuracy"]
    assert data["task_score"]["metric"] == "exact_match" and data["forgetting"] is None
    assert json.loads((run / "eval.json").read_text()) == saved
    assert (run / "eval-chat.json").is_file() and "## Evaluation: " in (run / "report.md").read_text()

    code, out, _ = run_cli(monkeypatch, capsys, "runs", "compare", run, run, "--runs-dir", runs)
    assert code == 0 and "forgetting" in out and "task score" in out and "held-out accuracy" in out


def test_evaluating_a_model_alone(tiny_model_dir):
    import leantune

    result = leantune.evaluate(str(tiny_model_dir), tasks=["trivia"], limit=8)
    assert result.models == ["model"] and result.forgetting is None and result.tasks[0].n == 8
    again = json.loads(result.to_json())
    from leantune.evaluation.result import from_dict

    assert json.loads(from_dict(again).to_json()) == again


def test_full_fine_tune_is_compared_with_a_fresh_base(tiny_model_dir, chat_file, tmp_path):
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{
        "method.name": "full", "training.max_steps": 4, "training.lr": 1e-3, "eval.after_train": True,
        "eval.tasks": "[held-out]"}))
    held = result.evaluation.tasks[0]
    loss = held.metrics[0]
    assert loss.metric == "loss" and loss.scores["tuned"] < loss.scores["base"]


def test_eval_errors(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{"training.max_steps": 2}))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assist\n')
    code, _, err = run_cli(monkeypatch, capsys, "eval", result.run_dir, "--task", broken)
    assert_user_error(code, err, "broken.jsonl:1")
    code, _, err = run_cli(monkeypatch, capsys, "eval", result.run_dir, "--task", chat_file, "--metric", "accuracy",
                           "--metric", "multiple_choice", "--metric", "bleu")
    assert_user_error(code, err, "Unknown metric 'bleu'")
    free = tmp_path / "free.jsonl"
    free.write_text("".join(json.dumps(chat_row(f"q{i}", f"a unique answer {i}")) + "\n" for i in range(10)))
    code, _, err = run_cli(monkeypatch, capsys, "eval", result.run_dir, "--task", free, "--metric", "accuracy")
    assert_user_error(code, err, "needs a closed answer set", "exact_match")
    no_adapter = tmp_path / "copy"
    shutil.copytree(result.run_dir, no_adapter)
    shutil.rmtree(no_adapter / "adapter")
    code, _, err = run_cli(monkeypatch, capsys, "eval", no_adapter)
    assert_user_error(code, err, "has no adapter", "--resume")
    code, _, err = run_cli(monkeypatch, capsys, "eval", "2099-no-such-run", "--runs-dir", runs)
    assert_user_error(code, err, "neither a model", "nor a run")
    code, _, err = run_cli(monkeypatch, capsys, "eval", tiny_model_dir, "--task", "held-out")
    assert_user_error(code, err, "Task 'held-out' is a run's own eval split")


def test_the_api_functions_survive_importing_their_packages():
    import leantune
    import leantune.evaluation  # noqa: F401 - the import that used to hide the function
    import leantune.training  # noqa: F401

    assert callable(leantune.evaluate) and callable(leantune.train)


def test_dollars_per_point_of_task_gain():
    from leantune.evaluation.result import EvalResult, MetricScore, TaskResult

    def result(delta, cost):
        held = TaskResult("held-out", 200, 200, False, [
            MetricScore("loss", {"base": 2.0, "tuned": 0.5}, delta=-1.5),
            MetricScore("accuracy", {"base": 0.5, "tuned": 0.5 + delta}, delta=delta)], 1.0)
        general = TaskResult("trivia", 190, 190, True, [MetricScore("multiple_choice", {"base": 0.5, "tuned": 0.5}, delta=0.0)], 1.0)
        return EvalResult("run", ["base", "tuned"], [held, general], cost_usd=cost)

    assert result(0.20, 4.0).usd_per_point == pytest.approx(0.2)  # $4 for +20 points of accuracy, not of loss
    assert "Cost per point of task gain: $0.2000" in result(0.20, 4.0).markdown()
    assert result(-0.05, 4.0).usd_per_point is None  # no gain: no price per point
    assert result(0.20, 0.0).usd_per_point is None and "set cost.usd_per_hour" in result(0.20, 0.0).markdown()


def test_trivia_with_generated_answers_and_multiple_choice_together(tiny_model_dir):
    import leantune

    result = leantune.evaluate(str(tiny_model_dir), tasks=["trivia"], metrics=["exact_match", "multiple_choice"], limit=4)
    assert [m.metric for m in result.tasks[0].metrics] == ["exact_match", "multiple_choice"] and result.tasks[0].general
    assert result.tasks[0].n == 4


def test_a_run_without_held_out_examples_has_no_held_out_task(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"training.max_steps": 2,
                                                                                      "data.eval_size": 0}))
    code, _, err = run_cli(monkeypatch, capsys, "eval", result.run_dir)
    assert_user_error(code, err, "held out no examples (data.eval_size=0", "--task")


def test_few_shot_baseline_beside_base_and_tuned(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    """Issue 20: `leantune eval RUN --baseline few-shot` scores the base model with k training rows in its prompt on
    the run's own items, says what the fine-tune gained over it and what the shots cost per request."""
    from leantune.data.records import Example
    from leantune.evaluation.few_shot import FewShot
    from leantune.evaluation.tasks import Task

    runs = tmp_path / "runs"
    run = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{"cost.usd_per_hour": 3.6})).run_dir
    code, out, err = run_cli(monkeypatch, capsys, "eval", run, "--baseline", "few-shot", "--shots", "3",
                             "--prompt-usd-per-mtok", "0.5", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["models"] == ["base", "few-shot", "tuned"]
    by_task = {t["task"]: t for t in data["tasks"]}
    held = by_task["held-out"]["metrics"]
    accuracy = next(m for m in held if m["metric"] == "accuracy")
    assert set(accuracy["scores"]) == {"base", "few-shot", "tuned"}
    assert accuracy["vs_few_shot"] == pytest.approx(accuracy["scores"]["tuned"] - accuracy["scores"]["few-shot"])
    assert accuracy["vs_few_shot_ci"][0] <= accuracy["vs_few_shot"] <= accuracy["vs_few_shot_ci"][1]
    # the general suite is not prompted with the task's rows
    assert all("few-shot" not in m["scores"] for m in by_task["trivia"]["metrics"])
    fs = data["few_shot"]
    assert fs["shots"] == 3 and sorted(set(fs["shot_answers"])) == ["ham", "spam"]  # both labels shown
    assert fs["extra_prompt_tokens"] > 0
    assert fs["usd_per_million_requests"] == pytest.approx(fs["extra_prompt_tokens"] * 0.5)
    assert fs["break_even_requests"] == pytest.approx(fs["training_usd"] / (fs["extra_prompt_tokens"] * 0.5 / 1e6))
    report = (run / "report.md").read_text()
    assert "tuned - few-shot" in report and "Fine-tuned vs few-shot" in report and "pays for itself after" in report

    # the shots are earlier turns of the same chat, after a system message
    shot = Example(({"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}))
    item = Example(({"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}))
    viewed = FewShot([shot]).view(Task("t", ("accuracy",), [item]))
    assert [m["content"] for m in viewed.examples[0].messages] == ["s", "q1", "a1", "q", "a"]
    assert FewShot([shot]).view(Task("g", ("accuracy",), [item], general=True)) is None

    # refusals: a model instead of a run, an unknown baseline
    code, _, err = run_cli(monkeypatch, capsys, "eval", tiny_model_dir, "--baseline", "few-shot")
    assert code == 2 and "give a run" in err
    code, _, err = run_cli(monkeypatch, capsys, "eval", run, "--baseline", "retrieval")
    assert code == 2 and "few-shot" in err
    code, _, err = run_cli(monkeypatch, capsys, "eval", run, "--baseline", "few-shot", "--task", "trivia")
    assert code == 2 and "run's own task" in err
    code, _, err = run_cli(monkeypatch, capsys, "eval", run, "--baseline", "few-shot", "--prompt-usd-per-mtok", "-1")
    assert code == 2 and "must be 0 or more" in err
    # training rows that cannot be shots: plain text, or none that fits the context beside the longest item
    from leantune.errors import UserError
    from leantune.evaluation.few_shot import choose_shots
    tokenizer = load_base(str(tiny_model_dir), "float32", "cpu").tokenizer
    with pytest.raises(UserError, match="needs chat rows"):
        choose_shots([Example(text="plain words")], [item], tokenizer, 512)
    with pytest.raises(UserError, match="not even one training row fits"):
        choose_shots([shot], [item], tokenizer, 8)
