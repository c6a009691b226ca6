"""runs/cost.py: the price of a run's machine, its billed time (the whole process, by phase) and the budget guard."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import tiny_overrides
from leantune.errors import ConfigError
from leantune.plan.catalog import load_catalog
from leantune.runs.cost import BilledClock, Price, gpu_for_device, normalise_device_name, resolve_price, run_cost

# What torch.cuda.get_device_name() / nvidia-smi print for each card of the catalog, variants included.
REAL_NAMES = {
    "Tesla T4": "t4",
    "NVIDIA L4": "l4",
    "NVIDIA A10G": "a10g",
    "NVIDIA L40S": "l40s",
    "NVIDIA A100-SXM4-40GB": "a100-40gb",
    "NVIDIA A100-PCIE-40GB": "a100-40gb",
    "NVIDIA A100-SXM4-80GB": "a100-80gb",
    "NVIDIA A100 80GB PCIe": "a100-80gb",
    "NVIDIA H100 80GB HBM3": "h100",
    "NVIDIA H100 PCIe": "h100-pcie",
    "NVIDIA H200": "h200",
    "NVIDIA B200": "b200",
    "NVIDIA GeForce RTX 3090": "rtx-3090",
    "NVIDIA GeForce RTX 4090": "rtx-4090",
    "NVIDIA GeForce RTX 5090": "rtx-5090",
}


@pytest.mark.parametrize("name,key", REAL_NAMES.items())
def test_each_catalog_card_is_priced_and_rated_as_itself(name, key):
    catalog = load_catalog()
    gpu = gpu_for_device(f"cuda:{name}", catalog)
    assert gpu is not None and gpu.key == key
    price = resolve_price(None, f"cuda:{name}", catalog)
    assert price.usd_per_hour == catalog[key].on_demand_usd and price.source == f"catalog {key}"
    assert gpu.bf16_tflops == catalog[key].bf16_tflops


def test_every_catalog_card_has_a_real_name_in_the_test():
    assert set(REAL_NAMES.values()) == set(load_catalog())


@pytest.mark.parametrize("name", ["NVIDIA L40", "NVIDIA A10", "NVIDIA H100 NVL", "NVIDIA H800", "AMD Instinct MI300X",
                                  "NVIDIA RTX A6000", "cpu"])
def test_cards_the_catalog_does_not_list_get_no_price_instead_of_a_neighbours(name):
    device = name if name == "cpu" else f"cuda:{name}"
    assert gpu_for_device(device) is None
    price = resolve_price(None, device)
    assert price.usd_per_hour is None and price.source == "none"


def test_normalised_names():
    assert normalise_device_name("NVIDIA A100-SXM4-80GB") == "a100 sxm4 80gb"
    assert normalise_device_name("cuda:Tesla T4") == "t4"
    assert normalise_device_name("NVIDIA GeForce RTX 4090") == "rtx 4090"


def test_the_configs_price_wins_and_zero_is_a_price():
    assert resolve_price(1.25, "cuda:NVIDIA H100 80GB HBM3") == Price(1.25, "config", "cuda:NVIDIA H100 80GB HBM3")
    assert resolve_price(0.0, "cpu").usd_per_hour == 0.0


def test_the_clock_bills_phases_and_the_rest_of_the_wall_time():
    clock = BilledClock(time.time() - 1.0)  # the process started a second ago
    with clock.phase("load"):
        time.sleep(0.05)
        with clock.phase("eval"):  # nested: counts once, to the outer phase
            time.sleep(0.05)
    phases = clock.breakdown()
    assert phases["load"] >= 0.1 and phases["eval"] == 0.0
    assert phases["other"] >= 0.95
    assert clock.seconds() == pytest.approx(sum(phases.values()), abs=0.01)
    assert clock.cost(Price(3.6, "config", "cpu")) == pytest.approx(clock.seconds() / 1000, rel=0.01)
    assert clock.cost(Price(None, "none", "cpu")) is None


def test_a_resumed_clock_carries_the_earlier_bill_and_the_steps_logged_after_it():
    info = {"billed": {"seconds": 10.0, "phases": {"load": 4.0, "train": 6.0}, "usd": 0.02,
                       "price": {"usd_per_hour": 7.2, "source": "config", "device": "cpu"}}}
    # the earlier process logged a step at 13 s and was killed before run.json was written again
    metrics = [{"step": 3, "loss": 1.0, "billed_s": 13.0}]
    clock = BilledClock.resumed(time.time(), info, metrics)
    assert clock.earlier == {"load": 4.0, "train": 9.0}
    assert clock.earlier_usd == pytest.approx(0.02 + 3.0 * 7.2 / 3600)
    assert clock.seconds() == pytest.approx(13.0, abs=0.05)
    # a different machine after the resume: the earlier dollars stay at the earlier price
    assert clock.cost(Price(0.0, "config", "cpu")) == pytest.approx(clock.earlier_usd)


def test_run_cost_takes_the_newer_of_run_json_and_the_last_logged_step():
    price = {"usd_per_hour": 3.6, "source": "config", "device": "cpu"}
    info = {"billed": {"seconds": 5.0, "phases": {"train": 5.0}, "usd": 0.005, "price": price}}
    assert run_cost(info, [{"step": 1, "loss": 1.0, "billed_s": 4.0, "cost_usd": 0.004}], None).usd == 0.005
    later = run_cost(info, [{"step": 2, "loss": 1.0, "billed_s": 8.0, "cost_usd": 0.008}], None)
    assert (later.seconds, later.usd) == (8.0, 0.008)
    old = run_cost({"device": "cpu"}, [{"step": 2, "loss": 1.0, "elapsed_s": 100.0}], 36.0)  # a run from before billing
    assert old.usd == pytest.approx(1.0) and old.price.source == "config"


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "leantune.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=timeout)


def test_a_budget_without_a_price_is_refused_before_anything_is_loaded(tiny_model_dir, chat_file, tmp_path):
    from leantune import train

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"cost.budget_usd=1 but no price: it runs on a CPU.*Set cost.usd_per_hour"):
        train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{"cost.budget_usd": 1}))
    assert not runs.exists() or not any(p.is_dir() for p in runs.iterdir())  # no run directory was made

    done = cli("train", *tiny_overrides(tiny_model_dir, chat_file, runs, **{"cost.budget_usd": 1}))
    assert done.returncode == 2 and "no price" in done.stderr and "Traceback" not in done.stderr


def test_a_project_budget_without_a_price_is_refused(tiny_model_dir, chat_file, tmp_path):
    runs = tmp_path / "runs"
    assert cli("budget", "set", "5", "--runs-dir", str(runs)).returncode == 0
    done = cli("train", *tiny_overrides(tiny_model_dir, chat_file, runs))
    assert done.returncode == 2 and "project 'default''s budget of $5.00 but no price" in done.stderr


def test_the_budget_stops_the_whole_process_bill_before_a_cent(tiny_model_dir, chat_file, tmp_path):
    """$1.80/h is a cent per 20 s of the process: start-up (imports, twice where the CLI restarts itself with
    TCMalloc), loading, data, eval passes and checkpoints count as well as the steps; the run stops with a checkpoint
    before its bill passes 1 cent. (At 10 s a cent, a loaded machine used the cent up before the first step.)"""
    runs = tmp_path / "runs"
    done = cli("train", *tiny_overrides(tiny_model_dir, chat_file, runs, **{
        "training.max_steps": 100000, "training.checkpoint_every": 100000, "training.eval_every": 20,
        "cost.usd_per_hour": 1.8, "cost.budget_usd": 0.01}))
    assert done.returncode == 3, done.stderr
    assert "next step with the final evaluation and save would pass cost.budget_usd=$0.01" in done.stderr
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    info = json.loads((run / "run.json").read_text())
    billed = info["billed"]
    assert info["status"] == "stopped-by-budget"
    assert (run / "checkpoints" / f"step-{info['stopped_at_step']:06d}").is_dir()
    assert 0.007 < billed["usd"] <= 0.01  # most of the cent used, none of it overshot
    assert billed["usd"] == pytest.approx(billed["seconds"] * 1.8 / 3600, rel=1e-4)
    phases = billed["phases"]
    # importing torch and transformers alone is seconds of a 10-second bill; the steps are not all of it
    assert phases["other"] > 1.0 and phases["load"] > 0 and phases["eval"] > 0 and phases["checkpoint"] > 0
    assert phases["train"] < billed["seconds"] - 1.0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps[-1]["cost_usd"] <= 0.01 and steps[-1]["billed_s"] > steps[-1]["elapsed_s"]

    shown = cli("runs", "show", run.name, "--runs-dir", str(runs))
    assert shown.returncode == 0, shown.stderr
    assert "loading the model" in shown.stdout and "$1.8/h (cost.usd_per_hour)" in shown.stdout


def test_a_completed_run_reports_its_billed_time_everywhere(tiny_model_dir, chat_file, tmp_path):
    from leantune.runs.index import RunIndex
    from leantune import train

    runs = tmp_path / "runs"
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{"cost.usd_per_hour": 36.0,
                                                                          "training.max_steps": 4}))
    info = json.loads((result.run_dir / "run.json").read_text())
    billed = info["billed"]
    assert billed["seconds"] > result.elapsed_s  # more than the steps: loading, data, eval, saving
    assert result.billed_s == pytest.approx(billed["seconds"], abs=0.5)
    assert result.cost_usd == pytest.approx(billed["usd"], rel=0.05)
    assert info["price"] == {"usd_per_hour": 36.0, "source": "config", "device": "cpu"}
    (row,) = RunIndex(runs).runs()
    assert row["cost_usd"] == billed["usd"] and row["wall_s"] == billed["seconds"]  # the ledger reads the bill
    report = (result.run_dir / "report.md").read_text()
    assert "## Cost" in report and "| training steps |" in report and "| checkpoints and saving |" in report
    assert f"**${billed['usd']:,.2f}**" in report or f"**${billed['usd']:.6f}**" in report


def test_a_run_without_a_price_has_an_unknown_cost_not_zero(tiny_model_dir, chat_file, tmp_path):
    from io import StringIO

    from rich.console import Console

    from leantune.runs.index import RunIndex
    from leantune import train

    log = StringIO()
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"training.max_steps": 2}),
                   console=Console(file=log, width=300))
    assert "cost: this run is on a CPU, so its cost is unknown; set cost.usd_per_hour" in log.getvalue()
    assert result.cost_usd is None and result.billed_s > 0
    (row,) = RunIndex(tmp_path / "runs").runs()
    assert row["cost_usd"] is None and row["usd_per_hour"] is None
    assert "unknown (no price)" in (result.run_dir / "report.md").read_text()
    listed = cli("runs", "ls", "--runs-dir", str(tmp_path / "runs"))
    assert listed.returncode == 0 and "unknown" in listed.stdout and "(1 without a price, not counted)" in listed.stdout


def test_an_unlisted_gpu_is_named_in_the_warning_and_in_the_budget_refusal():
    from leantune.runs.cost import missing_price_warning, refuse_budget_without_price

    price = resolve_price(None, "cuda:NVIDIA L40")
    assert missing_price_warning(price) == ("cost: this run is on 'NVIDIA L40' (not in the GPU catalog), so its cost is "
                                            "unknown; set cost.usd_per_hour (e.g. cost.usd_per_hour=0.5) to meter it and "
                                            "to use budgets")
    assert missing_price_warning(resolve_price(None, "cuda:NVIDIA L40S")) is None
    with pytest.raises(ConfigError, match=r"cost.budget_usd=2 but no price: it runs on 'NVIDIA L40' \(not in the GPU catalog\)"):
        refuse_budget_without_price(price, 2.0)
    refuse_budget_without_price(price, None)  # no budget: nothing to enforce, nothing refused


def test_a_budget_used_up_before_the_first_step_stops_there(tiny_model_dir, chat_file, tmp_path):
    """At $3.6M/h (a dollar a millisecond) loading and tokenising alone spend a cent: no step starts."""
    runs = tmp_path / "runs"
    done = cli("train", *tiny_overrides(tiny_model_dir, chat_file, runs, **{
        "cost.usd_per_hour": 3_600_000, "cost.budget_usd": 0.01}))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    flat = " ".join(done.stderr.split())
    assert "cost.budget_usd=$0.01 was used up before training step 1" in flat and "leantune train --resume" in flat
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "stopped-by-budget" and info["stopped_at_step"] == 0 and info["billed"]["usd"] >= 0.01
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


def test_a_model_directory_without_weights_is_refused_by_name(tmp_path):
    from leantune.errors import ModelError
    from leantune.runs.fingerprint import model_fingerprint

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"model.base: '.*' holds no weight files .* Pass a Hugging Face model directory"):
        model_fingerprint(str(tmp_path))


def test_cost_watch_flags_a_run_slower_than_its_plan_or_than_itself():
    from leantune.runs.anomalies import WARMUP_STEPS, WINDOW, CostWatch, price_anomaly

    # slower than planned: fires once, when the window after warm-up is in, with the dollars per million tokens
    watch = CostWatch(planned_tokens_per_s=1000, planned_step_s=2.0, usd_per_hour=3.6)
    fired = [watch.observe(250) for _ in range(WARMUP_STEPS + WINDOW + 3)]
    assert [len(f) for f in fired] == [0] * (WARMUP_STEPS + WINDOW - 1) + [1, 0, 0, 0]
    assert "4.0x slower" in fired[WARMUP_STEPS + WINDOW - 1][0] and "$4.0000 per million tokens instead of $1.0000" \
        in fired[WARMUP_STEPS + WINDOW - 1][0]
    # a plan whose steps are too short to mean anything (per-step overhead) is not held against the run
    assert not any(CostWatch(1e6, 0.001, None).observe(100) for _ in range(20))
    # a run that halves its own speed part-way
    watch = CostWatch(None, None, None)
    speeds = [50, 80] + [100] * WINDOW + [40] * WINDOW + [100] * 3 + [30] * WINDOW
    alerts = [a for s in speeds for a in watch.observe(s)]
    assert len(alerts) == 1 and "slowed to 40 tokens/s" in alerts[0] and "from 100" in alerts[0]
    # steps too short for a slowdown to cost anything are not flagged
    watch = CostWatch(None, None, None)
    assert not [a for s in [100] * 6 + [30] * 6 for a in watch.observe(s, 0.01)]
    # a steady run raises nothing
    assert not any(CostWatch(100, 1.0, 2.0).observe(90 + i % 3) for i in range(30))
    # prices: a typo tenfold is flagged, a discount is not
    assert "10.0x the catalog" in price_anomaly(30.0, 3.0, "NVIDIA H100 80GB HBM3")
    assert price_anomaly(2.0, 3.0, "NVIDIA H100 80GB HBM3") is None and price_anomaly(2.0, None, "cpu") is None


def test_a_run_that_slows_down_raises_a_cost_alert(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    """A stalled step mid-run: the alert is printed, appended to the runs root's alerts.log, kept in run.json and
    counted by `runs ls`."""
    import time as time_module

    from leantune import train
    from leantune.training.objectives.sft import SFT
    from test_cli import run_cli

    real_step, calls = SFT.step, []

    def stalling_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 6:  # the data loader stalls from step 7 on
            time_module.sleep(0.25)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(SFT, "step", stalling_step)
    runs = tmp_path / "runs"
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{"training.max_steps": 12,
                                                                           "method.dropout": 0.0}))
    info = json.loads((result.run_dir / "run.json").read_text())
    assert len(info["alerts"]) == 1 and info["alerts"][0].startswith("cost anomaly: slowed to")
    log = (runs / "alerts.log").read_text()
    assert result.run_dir.name in log and "cost anomaly: slowed to" in log
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "ls", "--runs-dir", runs)
    assert code == 0 and "(1 alert)" in " ".join(out.split())
