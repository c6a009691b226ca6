"""How fast `leantune ui` answers its runs page with 1,000 runs in the index (issue 21 asks for under 300 ms).

A tiny real training run is the template; 1,000 copies of its run files (config, run.json, metrics, plan, and
eval.json on every third) are indexed by `runs reindex`'s own code, and the real `leantune ui` serves them on
127.0.0.1. Each round requests, in turn, the default page, the page sorted by dollars and a filtered page; the first
request (cold: every eval.json parsed) is reported apart. Times are wall-clock from a client in this process, so
they include HTTP and the 1,000-row HTML (its size is recorded).

    python bench/ui_runs_page.py [--runs 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROVENANCE, REPO, provenance  # noqa: E402

STATUSES = ("completed", "completed", "completed", "failed", "preempted")
COPIED = ("config.yaml", "run.json", "metrics.jsonl", "plan.json")


def make_runs_root(template: Path, target: Path, n: int) -> Path:
    """`n` runs made from one real run's files, with their own ids, start times and statuses; indexed."""
    from leantune.runs.index import RunIndex
    from leantune.runs.ledger import row_for, run_dirs

    info = json.loads((template / "run.json").read_text())
    target.mkdir(parents=True)
    for i in range(n):
        run = target / f"20260101-{i:06d}-copy-{i}"
        run.mkdir()
        for name in COPIED:
            if (template / name).is_file():
                shutil.copy2(template / name, run / name)
        if i % 3 == 0 and (template / "eval.json").is_file():
            shutil.copy2(template / "eval.json", run / "eval.json")
        (run / "run.json").write_text(json.dumps({**info, "id": run.name, "name": f"copy-{i}",
                                                  "status": STATUSES[i % len(STATUSES)], "created": info["created"] + i}))
    RunIndex(target).reindex(run_dirs(target), row_for)
    return target


def _get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return time.perf_counter() - started, len(body)


def _template_run(work: Path) -> Path:
    from conftest import tiny_overrides, write_spam_chat
    from tiny_model import build_tiny_model

    from leantune import train

    model = build_tiny_model(work / "tiny-llama")
    data = write_spam_chat(work / "chat.jsonl")
    result = train(None, tiny_overrides(model, data, work / "template-runs", **{
        "training.max_steps": 20, "training.eval_every": 5, "cost.usd_per_hour": 2.0, "eval.after_train": True}))
    return result.run_dir


def main() -> None:  # tests/ goes on the path below: the tiny model and start_ui come from there
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from test_ui import start_ui, stop

    work = REPO / "bench" / ".work" / "ui"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print("training a tiny template run ...", flush=True)
    template = _template_run(work)
    print(f"copying it into {args.runs} runs and indexing them ...", flush=True)
    started = time.perf_counter()
    root = make_runs_root(template, work / "runs", args.runs)
    index_s = time.perf_counter() - started
    proc, url = start_ui(root)
    pages = {"default": "/", "sorted by $": "/?sort=cost_usd&order=asc", "filtered": "/?q=copy-99&status=completed"}
    try:
        cold, size = _get(url + "/")
        times = {k: [] for k in pages}
        sizes = {}
        for i in range(args.rounds):
            for name, path in pages.items():  # the three alternate, so load on the machine falls on all alike
                seconds, sizes[name] = _get(url + path)
                times[name].append(seconds)
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in times.items()), flush=True)
    finally:
        stop(proc)

    def summary(values: list[float]) -> dict:
        q = statistics.quantiles(values, n=4)
        return {"median_ms": round(statistics.median(values) * 1000, 1), "q1_ms": round(q[0] * 1000, 1),
                "q3_ms": round(q[2] * 1000, 1), "max_ms": round(max(values) * 1000, 1)}

    result = {PROVENANCE: provenance(), "runs": args.runs, "rounds": args.rounds, "index_build_s": round(index_s, 2),
              "cold_first_request_ms": round(cold * 1000, 1),
              "pages": {k: {**summary(v), "html_bytes": sizes[k]} for k, v in times.items()},
              "bar_ms": 300, "meets_bar": statistics.median(times["default"]) * 1000 < 300}
    out = REPO / "bench" / "results" / "ui_runs_page.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
