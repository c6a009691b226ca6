"""EWC and replay: the penalty is zero at the start, positive once weights move, and holds weights the
Fisher marks as important; replay mixes the stated share of general examples in."""

import json

import pytest
import torch

from conftest import tiny_overrides
from leantune.errors import ConfigError
from leantune import train
from leantune.training.objectives.ewc import EWCPenalty, fisher_cache_path
from leantune.training.objectives.replay import replay_rows


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_ewc_penalty_is_logged_and_the_fisher_is_cached(tiny_model_dir, chat_file, tmp_path, capsys):
    values = {"forgetting.ewc_lambda": 100.0, "forgetting.ewc_examples": 8, "training.max_steps": 6}
    first = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "a", **values))
    steps = metrics(first.run_dir)
    assert steps[0]["ewc_penalty"] == 0.0  # B starts at zero: no change yet
    assert steps[-1]["ewc_penalty"] > 0
    cached = list((fisher_cache_path({}).parent).glob("*.safetensors"))
    assert cached
    from io import StringIO

    from rich.console import Console

    log = StringIO()
    train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "b", **values), console=Console(file=log, width=200))
    assert "Fisher information from the cache" in log.getvalue()


def test_the_fisher_cache_is_keyed_by_content_not_by_path(tiny_model_dir, chat_file, tmp_path):
    """A copied model and data file reuse the Fisher; an edited data file (same path) does not."""
    import shutil
    from io import StringIO

    from rich.console import Console

    general = tmp_path / "general.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": str(2 * i)}]} for i in range(8)]
    general.write_text("".join(json.dumps(r) + "\n" for r in rows))
    values = {"forgetting.ewc_lambda": 10.0, "forgetting.ewc_examples": 8, "training.max_steps": 1,
              "forgetting.ewc_data": str(general)}

    def fisher_note(model_dir, name):
        log = StringIO()
        train(None, tiny_overrides(model_dir, chat_file, tmp_path / name, **values), console=Console(file=log, width=300),
              allow_duplicate=True)
        return "from the cache" in log.getvalue()

    assert not fisher_note(tiny_model_dir, "first")
    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, copy)
    assert fisher_note(copy, "copied")  # same content elsewhere: the cached Fisher
    general.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1][:6]))  # edited in place
    assert not fisher_note(tiny_model_dir, "edited")


def test_a_fisher_for_other_layers_is_refused_not_dropped(tiny_model_dir, chat_file, tmp_path):
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path, **{"training.max_steps": 1}))
    with pytest.raises(ConfigError, match="1 Fisher entries match no adapted layer"):
        EWCPenalty(result.model, {"model.layers.9.mlp.up_proj": torch.ones(2, 2)}, strength=1.0, full=False)


def test_stronger_ewc_keeps_the_adapters_smaller(tiny_model_dir, chat_file, tmp_path):
    def change(strength):
        values = {"forgetting.ewc_lambda": strength, "forgetting.ewc_examples": 8, "training.max_steps": 10,
                  "method.dropout": 0.0}
        result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / str(strength), **values))
        layers = [m for m in result.model.modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")]
        return sum(float(m.get_delta_weight("default").detach().norm()) for m in layers)

    assert change(1e6) < 0.5 * change(0.0)


def test_ewc_for_full_fine_tuning_anchors_every_parameter(tiny_model_dir):
    model = torch.nn.Linear(3, 2)
    fisher = {name: torch.ones_like(p) for name, p in model.named_parameters()}
    penalty = EWCPenalty(model, fisher, strength=2.0, full=True)
    assert penalty().item() == 0.0
    with torch.no_grad():
        model.weight += 0.5
    assert penalty().item() == pytest.approx(2.0 * 6 * 0.25)


def test_replay_mixes_the_stated_share():
    mixed = replay_rows(list(range(90)), ["g1", "g2", "g3"], fraction=0.1, seed=0)
    assert len(mixed) == 100 and sum(isinstance(x, str) for x in mixed) == 10
    assert replay_rows([1, 2], ["g"], 0.0, 0) == [1, 2]


def test_replay_balanced_by_trained_tokens_keeps_the_task_share_of_the_loss():
    """Task rows train 1 token each (a label), general rows 9: 10% of the rows would be 53% of the loss."""
    from leantune.data.tokenize import IGNORE, TokenizedExample

    def row(trained, source):
        return TokenizedExample([1] * 12, [IGNORE] * (12 - trained) + [5] * trained, source)

    task, general = [row(1, "task") for _ in range(90)], [row(9, "general") for _ in range(5)]
    by_rows = replay_rows(task, general, 0.1, seed=0, by="examples")
    assert sum(r.source == "general" for r in by_rows) == 10
    by_tokens = replay_rows(task, general, 0.1, seed=0)  # the default
    replay = [r for r in by_tokens if r.source == "general"]
    share = sum(r.n_label_tokens for r in replay) / sum(r.n_label_tokens for r in by_tokens)
    assert len(replay) == 1 and share == pytest.approx(0.1, abs=0.02)


def test_replay_in_training(tiny_model_dir, chat_file, tmp_path):
    from io import StringIO

    from rich.console import Console

    log = StringIO()
    train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path, **{"forgetting.replay_fraction": 0.2,
                                                                       "forgetting.replay_balance": "examples",
                                                                       "training.max_steps": 2}),
          console=Console(file=log, width=200))
    assert "replay: 10 rows from trivia mixed into 40 training rows, 20% of the examples asked; they are 20% of " \
           "the rows and" in log.getvalue()
    log = StringIO()
    train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "t", **{"forgetting.replay_fraction": 0.2,
                                                                             "training.max_steps": 2}),
          console=Console(file=log, width=200))
    line = next(x for x in log.getvalue().splitlines() if x.startswith("replay:"))
    assert "20% of the tokens asked" in line and line.endswith("of the trained tokens")
    tokens_share = int(line.rsplit(" and ", 1)[1].split("%")[0])
    assert 15 <= tokens_share <= 25, line


def test_ewc_through_a_4bit_base_is_refused(tiny_model_dir, chat_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    with pytest.raises(ConfigError, match="4-bit quantised base"):
        train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path, **{"method.name": "qlora",
                                                                           "forgetting.ewc_lambda": 1.0}))


def test_a_replay_run_trains_on_the_task_examples_of_the_run_without_it(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """Same seed, with and without replay: the task's rows arrive in the same order (the replayed ones between
    them), so the pair differs by the replay alone, not by which task examples were drawn."""
    import leantune.training.recipe as recipe

    seen: list[list] = []
    real = recipe.micro_batches_for_step

    def recording(*args, **kwargs):
        batches = real(*args, **kwargs)
        seen[-1].extend(row for mb in batches for row in mb)
        return batches

    monkeypatch.setattr(recipe, "micro_batches_for_step", recording)
    runs = {"plain": {}, "replay": {"forgetting.replay_fraction": 0.2, "forgetting.replay_balance": "examples"}}
    for name, extra in runs.items():
        seen.append([])
        train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / name,
                                   **{"training.max_steps": 4, "data.packing": False, **extra}))
    plain, replay = seen
    is_task = [r.source.startswith(str(chat_file)) for r in replay]  # a task row names the chat file as its source
    assert 0 < is_task.count(False) < len(replay)
    task_rows = [tuple(r.input_ids) for r, task in zip(replay, is_task) if task]
    assert task_rows == [tuple(r.input_ids) for r in plain][: len(task_rows)]
