"""How fast `leantune data check` runs on a large file, and how much memory it needs.

Generates a synthetic chat JSONL of the requested size (default 1 GiB; 1-3 turns a row, ~1 KB a row, words
drawn from a Zipf-distributed vocabulary) with known problems planted in it: exact duplicates, near
duplicates (one word changed), conflicting answers, broken JSON lines, mojibake and e-mail addresses. Then runs
`leantune data check FILE --json` in a fresh process and reports rows/s, MiB/s and the peak resident memory of
that process (ru_maxrss), and whether every planted problem was found in the right number.

    python bench/data_check.py                 # 1 GiB, no tokenizer
    python bench/data_check.py --size-mib 100 --model smollm2-135m   # with token lengths (slower)
    python bench/data_check.py --fresh         # regenerate the file and measure again
    python bench/data_check.py --remeasure     # measure again on the file already generated

The generated file is kept in bench/.work/ (git-ignored) and reused; results are appended to
bench/results/data_check.json keyed by size and model, so a rerun skips what is already measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"  # the generated file depends on the generator's seed and size only, not on the code measured
RESULTS = HERE / "results" / "data_check.json"
sys.path.insert(0, str(HERE))
from common import load_results, write_results  # noqa: E402

# planted problems, as a share of rows
EXACT_DUP, NEAR_DUP, CONFLICT, BROKEN, MOJIBAKE, EMAIL = 0.02, 0.01, 0.005, 0.001, 0.003, 0.002


def vocabulary(rng: np.random.Generator, size: int = 20_000) -> np.ndarray:
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = np.linspace(2.0, 0.2, len(letters))
    words = {"".join(rng.choice(letters, size=rng.integers(2, 10), p=weights / weights.sum())) for _ in range(size * 2)}
    return np.array(sorted(words)[:size], dtype=object)


def generate(path: Path, size_bytes: int, seed: int = 0) -> dict:
    """Write the file; returns how many of each planted problem it holds."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    zipf = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    zipf /= zipf.sum()
    planted = {"rows": 0, "exact_duplicates": 0, "near_duplicates": 0, "conflicts": 0, "unreadable": 0, "mojibake": 0,
               "email": 0}
    recent: list[dict] = []
    written = 0
    tmp = path.with_suffix(".partial")
    started = time.time()
    with open(tmp, "w", encoding="utf-8") as f:
        while written < size_bytes:
            words = vocab[rng.choice(len(vocab), size=(4096, 170), p=zipf)]
            kinds = rng.random(4096)
            for i in range(4096):
                u = rng.random()
                if recent and u < EXACT_DUP:
                    row = recent[int(rng.integers(len(recent)))]
                    planted["exact_duplicates"] += 1
                elif recent and u < EXACT_DUP + NEAR_DUP:
                    base = recent[int(rng.integers(len(recent)))]
                    text = base["messages"][0]["content"].split(" ")
                    text[len(text) // 2] = "changed"
                    row = {"messages": [{"role": "user", "content": " ".join(text)}] + base["messages"][1:]}
                    planted["near_duplicates"] += 1
                elif recent and u < EXACT_DUP + NEAR_DUP + CONFLICT:
                    base = recent[int(rng.integers(len(recent)))]
                    row = {"messages": base["messages"][:-1] + [{"role": "assistant", "content": "a different answer"}]}
                    planted["conflicts"] += 1
                else:
                    w = words[i]
                    turns = 1 + int(kinds[i] * 3)
                    cuts = np.linspace(0, len(w), 2 * turns + 1).astype(int)
                    messages = []
                    for t in range(2 * turns):
                        messages.append({"role": "user" if t % 2 == 0 else "assistant",
                                         "content": " ".join(w[cuts[t] : cuts[t + 1]].tolist())})
                    v = rng.random()
                    if v < MOJIBAKE:
                        messages[0]["content"] += " donâ€™t cafÃ©"
                        planted["mojibake"] += 1
                    elif v < MOJIBAKE + EMAIL:
                        messages[0]["content"] += f" write to user{i}@example.com"
                        planted["email"] += 1
                    row = {"messages": messages}
                    if len(recent) < 5000:
                        recent.append(row)
                    else:
                        recent[int(rng.integers(5000))] = row
                line = json.dumps(row)
                if rng.random() < BROKEN:
                    line = line[: len(line) // 2]
                    planted["unreadable"] += 1
                f.write(line + "\n")
                written += len(line) + 1
                planted["rows"] += 1
            print(f"\r  generating: {written / 2**20:,.0f} / {size_bytes / 2**20:,.0f} MiB "
                  f"({time.time() - started:.0f}s)", end="", flush=True, file=sys.stderr)
    print(file=sys.stderr)
    os.replace(tmp, path)
    return planted


def measure(path: Path, model: str | None) -> dict:
    command = [sys.executable, "-m", "leantune.cli", "data", "check", str(path), "--json"]
    if model:
        command += ["--model", model, "--seq-len", "512"]
    print(f"  running: {' '.join(command[2:])}", file=sys.stderr)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode not in (0, 1):
        raise SystemExit(f"data check failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    if peak_kib <= before:
        print("  (peak memory of this child is not above an earlier child's: the reading is an upper bound)", file=sys.stderr)
    report = json.loads(proc.stdout)
    found = {f["code"]: f["count"] for f in report["findings"]}
    return {"seconds": round(seconds, 1), "rows": report["rows"], "rows_per_s": round(report["rows"] / seconds),
            "mib_per_s": round(path.stat().st_size / 2**20 / seconds, 2), "peak_rss_mib": round(peak_kib / 1024),
            "found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--model", default=None, help="also tokenise (token lengths, padding estimate)")
    parser.add_argument("--fresh", action="store_true", help="regenerate the file and measure again")
    parser.add_argument("--remeasure", action="store_true", help="measure again on the existing file")
    args = parser.parse_args()

    WORK.mkdir(exist_ok=True)
    path = WORK / f"chat-{args.size_mib}mib.jsonl"
    planted_path = path.with_suffix(".planted.json")
    if args.fresh or not path.exists() or not planted_path.exists():
        print(f"writing {path}", file=sys.stderr)
        planted = generate(path, args.size_mib * 2**20)
        planted_path.write_text(json.dumps(planted))
    planted = json.loads(planted_path.read_text())

    results = load_results(RESULTS)  # measurements of this commit only
    key = f"{args.size_mib}mib-{args.model or 'no-model'}"
    if key in results and not (args.fresh or args.remeasure):
        print(f"{key}: already measured (use --fresh to measure again)", file=sys.stderr)
        result = results[key]
    else:
        result = measure(path, args.model)
        result.update(planted=planted, file_mib=round(path.stat().st_size / 2**20), model=args.model,
                      machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                      date=time.strftime("%Y-%m-%d"))
        results[key] = result
        write_results(RESULTS, results)
    print(f"{key}: {result['rows']:,} rows in {result['seconds']}s = {result['rows_per_s']:,} rows/s, "
          f"{result['mib_per_s']} MiB/s; peak memory {result['peak_rss_mib']:,} MiB")
    for code in ("exact_duplicates", "near_duplicates", "conflicts", "unreadable", "mojibake"):
        print(f"  {code:18} planted {planted[code]:>8,}  found {result['found'].get(code, 0):>8,}")
    print(f"  {'personal_data':18} planted {planted['email']:>8,}  found {result['found'].get('personal_data', 0):>8,}")


if __name__ == "__main__":
    main()
