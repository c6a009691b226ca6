import json
import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test session gets its own model cache unless a test sets LEANTUNE_HOME itself."""
    if "LEANTUNE_TEST_HOME" not in os.environ:
        os.environ["LEANTUNE_TEST_HOME"] = str(tmp_path_factory.mktemp("leantune-home"))
    monkeypatch.setenv("LEANTUNE_HOME", os.environ["LEANTUNE_TEST_HOME"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def chat_row(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def write_spam_chat(path, rows: int = 48):
    """A small, learnable chat dataset: the reply is a fixed function of the prompt."""
    path.write_text("".join(json.dumps(chat_row(f"Is message {i} spam?", "spam" if i % 3 == 0 else "ham")) + "\n"
                            for i in range(rows)))
    return path


@pytest.fixture
def chat_file(tmp_path):
    return write_spam_chat(tmp_path / "chat.jsonl")


def tiny_overrides(model_dir, data, runs_dir, **extra) -> list[str]:
    """Overrides for a fast, deterministic run on the tiny model."""
    values = {
        "model.base": str(model_dir),
        "model.dtype": "float32",  # exact comparisons below; auto may pick bf16 on CPUs that have it
        "data.train": str(data),
        "data.eval_size": 8,
        "data.max_seq_len": 64,
        "method.dropout": 0.1,
        "training.micro_batch_size": 4,
        "training.lr": 3e-3,
        "training.max_steps": 12,
        "training.checkpoint_every": 4,
        "training.threads": 1,
        "output.runs_dir": str(runs_dir),
        "eval.after_train": False,  # tests/test_evaluate.py covers it; elsewhere it would only add seconds
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# CI sets LEANTUNE_REQUIRE_ALL=1 (as `make test` does): a test skipped because an optional dependency (bitsandbytes,
# MLflow) is missing then fails, so a green run always means QLoRA, 8-bit AdamW and tracking were really tested.
REQUIRE_ALL = os.environ.get("LEANTUNE_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and LEANTUNE_REQUIRE_ALL=1 allows no skips: {reason}"
