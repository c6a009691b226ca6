"""bench/quality.py's summary: how a method is held to LoRA (the issue's bar for EWC and replay)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    with pytest.MonkeyPatch.context() as patch:
        # the module names its (git-ignored) work folder by the code version: a fixed one, not a git call
        patch.setenv("LEANTUNE_BENCH_COMMIT", "unit-test")
        spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def job(method, seed, score, general=0.5):
    return {"task": "sms-spam", "method": method, "seed": seed, "score": score, "metric": "balanced accuracy",
            "general": general, "trivia": general, "analogies": general, "peak_rss_gib": 1.0, "alone": True}


def test_a_method_is_compared_with_lora_seed_by_seed(quality):
    lora = [0.90, 0.80, 0.95]
    ewc = [0.88, 0.775, 0.92]  # 2, 2.5 and 3 points under LoRA at each seed: a consistent loss, despite the spread
    jobs = {f"{m}/{s}": job(m, s, v) for m, scores in (("lora", lora), ("lora+ewc", ewc)) for s, v in enumerate(scores)}
    row = quality.summarise(jobs)["sms-spam"]["lora+ewc"]
    assert row["vs_lora"] == pytest.approx(sum(ewc) / sum(lora))
    assert row["minus_lora_mean"] == pytest.approx(-0.025)
    # t(2) = 4.303 x sd(-0.02, -0.025, -0.03) / sqrt(3)
    assert row["minus_lora_ci95"] == pytest.approx(4.303 * 0.005 / 3 ** 0.5)
    # unpaired, the two intervals overlap entirely; paired, the loss is real (the interval excludes 0)
    assert row["score_ci95"] > abs(row["minus_lora_mean"]) > row["minus_lora_ci95"]


def test_a_seed_lora_lacks_is_left_out_of_the_paired_difference(quality):
    jobs = {"l0": job("lora", 0, 0.9), "e0": job("lora+ewc", 0, 0.8), "e1": job("lora+ewc", 1, 0.1)}
    row = quality.summarise(jobs)["sms-spam"]["lora+ewc"]
    assert row["minus_lora_mean"] == pytest.approx(-0.1)


def test_dollars_per_run_only_where_the_wall_time_was_the_jobs_own(quality):
    cpu = {"device": "cpu", "billed_seconds": 3600.0, "cost_usd": None}
    assert quality.job_cost_usd({**cpu, "alone": True}) == pytest.approx(quality.CPU_USD_PER_HOUR)
    assert quality.job_cost_usd({**cpu, "alone": False}) is None  # it shared the CPU: half a machine, not a price
    gpu = {"device": "cuda", "billed_seconds": 60.0, "cost_usd": 0.05, "alone": False}
    assert quality.job_cost_usd(gpu) == 0.05  # a GPU run's own bill at its catalog price


def test_the_table_shows_the_whole_suites_change_beside_its_parts(quality, capsys):
    # the base answers 50% of every suite; EWC 49% of the whole suite, 40% of trivia and 60% of the analogies
    base = {**job("base", 0, 0.5), "general": 0.50, "trivia": 0.50, "analogies": 0.50}
    ewc = {**job("lora+ewc", 0, 0.9), "general": 0.49, "trivia": 0.40, "analogies": 0.60}
    quality.print_tables({"jobs": {"b": base, "e": ewc}})
    header, _, _, row = capsys.readouterr().out.strip().splitlines()[-4:]
    assert "general change (335)" in header
    cells = [c.strip() for c in row.split("|")]
    assert cells[6:9] == ["-1.0 pt", "-10.0 pt", "+10.0 pt"]
