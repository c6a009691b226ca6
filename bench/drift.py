"""Drift detection and incremental updates, measured (issue 18).

Part 1, detection (`--part detection`): every signal of `leantune drift check` (drift/stats.py, the same functions
and the same chat-template rendering) on samples of n prompts against n reference prompts of sms-spam that the
parent run never trained on, Holm-corrected at alpha = 0.05 with the check's minimum effects:
- false alarms: two disjoint random samples of the same pool (20 seeds);
- real shifts: tweets-sentiment prompts (another dataset), and sms-spam's spam-only messages (a subpopulation
  shift inside one dataset: what a spam wave looks like);
- injected shifts: length (each message followed by a second one) and vocabulary (30% of words scrambled);
detection rate per signal and overall by n = 50, 100, 300, 1000 (10 seeds per shift). The model-based signals
(embedding MMD with the base model, the tuned model's loss) cost a forward pass per prompt on this CPU, so their
pools are embedded once and they are measured up to n = 300; the text signals at every n.

Part 2, update (`--part update`): a LoRA parent on sms-spam, then the real shift (tweets-sentiment rows) learned
four ways: new rows only; + replay of the parent's rows; + replay + EWC anchored to the parent (the `train --from`
defaults); from scratch on old + new rows. Each is scored against the parent on the same items (evaluation/
update.py): gain on the tweets held-out rows, retention on the parent's sms held-out rows, forgetting on the
general suite, with wall time and dollars at a stated price of $0.50/hour.

    python bench/drift.py                      # both parts; finished pieces of this commit are kept
    python bench/drift.py --part detection
Writes bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_results, work_dir, write_results  # noqa: E402

RESULTS = HERE / "results" / "drift.json"
WORK = work_dir("drift")
PRICE = 0.5  # $/hour, stated: what the dollars below are at
SIZES = (50, 100, 300, 1000)
MODEL_SIGNAL_MAX_N = 300
NULL_SEEDS, SHIFT_SEEDS = 20, 10
ALPHA = 0.05
PARENT = {"model.base": "smollm2-135m", "data.train": "sms-spam", "data.eval_size": 200, "data.max_seq_len": 128,
          "data.max_train_examples": 400, "training.max_steps": 40, "training.micro_batch_size": 8,
          "training.warmup_ratio": 0.1, "training.seed": 0, "training.lr": 5e-4, "training.checkpoint_every": 1000,
          "cost.usd_per_hour": PRICE, "eval.after_train": False}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_cached(name: str, overrides: dict, parent: Path | None = None) -> Path:
    """A finished run of this commit under WORK/runs, trained once."""
    marker = WORK / f"{name}.run"
    if marker.is_file() and (Path(marker.read_text()) / "adapter").is_dir():
        return Path(marker.read_text())
    from leantune import train

    args = [f"{k}={v}" for k, v in {**overrides, "output.runs_dir": str(WORK / "runs"), "output.name": name}.items()]
    result = train(None, args, parent=str(parent) if parent else None, allow_duplicate=True)
    marker.write_text(str(result.run_dir))
    return result.run_dir


# ------------------------------------------------------------------ detection
def prompt_pools(parent_dir: Path) -> tuple[dict[str, list], set[str]]:
    """Disjoint pools of prompts the parent never trained on: the reference (null) pool of sms-spam, 300 of its spam
    messages, 1000 tweets, and 1000 other sms messages turned into the injected shifts; and the parent's training
    vocabulary."""
    from leantune.data import load_examples, run_splits
    from leantune.drift.check import _prompt_of
    from leantune.runs.rundir import open_run_dir

    trained = run_splits(open_run_dir(parent_dir).config()).train
    seen = {json.dumps(e.messages) for e in trained}
    sms = [e for e in load_examples("sms-spam") if json.dumps(e.messages) not in seen]
    rng = random.Random(0)
    rng.shuffle(sms)
    spam = [e for e in sms if e.answer.strip() == "spam"][:MODEL_SIGNAL_MAX_N]  # ~650 in the whole set: 300 kept apart
    rest = [e for e in sms if e not in spam]
    reference, base_rows = rest[: 2 * max(SIZES)], rest[2 * max(SIZES): 3 * max(SIZES)]
    tweets = load_examples("tweets-sentiment")
    rng.shuffle(tweets)

    def prompts(rows):
        return [_prompt_of(list(e.messages)) for e in rows]

    pools = {"reference": prompts(reference), "tweets": prompts(tweets[: max(SIZES)]), "spam-only": prompts(spam),
             "length": [_inject_length(a, b) for a, b in zip(prompts(base_rows), reversed(prompts(base_rows)))],
             "vocabulary": [_inject_vocabulary(p, i) for i, p in enumerate(prompts(base_rows))]}
    vocabulary = {w for e in trained for m in e.messages if m["role"] != "assistant" for w in _words(m["content"])}
    return pools, vocabulary


def _words(text):
    from leantune.drift.stats import words

    return words(text)


def _with_user_text(prompt, text):
    from leantune.drift.check import Prompt

    messages = [dict(m) for m in prompt.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last]["content"] = text
    return Prompt(messages, None)


def _user(prompt) -> str:
    return next(m["content"] for m in reversed(prompt.messages) if m["role"] == "user")


def _inject_length(a, b):
    return _with_user_text(a, _user(a) + "\n" + _user(b).split("\n\n")[-1])


def _inject_vocabulary(prompt, seed: int):
    rng = random.Random(seed)
    head, _, message = _user(prompt).rpartition("\n\n")
    scrambled = [("".join(rng.sample(w, len(w))) + "x" if len(w) > 2 and rng.random() < 0.3 else w) for w in message.split()]
    return _with_user_text(prompt, (head + "\n\n" if head else "") + " ".join(scrambled))


def model_features(pools: dict, parent_dir: Path) -> dict:
    """Per prompt: the base model's mean-pooled embedding and the tuned model's loss, for the first
    2 x 300 reference prompts and 300 of each shift; cached in WORK."""
    cache = WORK / "features.npz"
    if cache.is_file():
        loaded = np.load(cache, allow_pickle=True)
        return {k: loaded[k].item() for k in loaded.files}
    from leantune.drift.check import _embed_and_loss, _render
    from leantune.models.inference import load_trained
    from leantune.models.loading import load_base, load_tokenizer
    from leantune.runs.rundir import open_run_dir

    tokenizer = load_tokenizer("smollm2-135m")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    take = {k: v[: 2 * MODEL_SIGNAL_MAX_N if k == "reference" else MODEL_SIGNAL_MAX_N] for k, v in pools.items()}
    texts = {k: _render(tokenizer, v) for k, v in take.items()}
    base = load_base("smollm2-135m", "auto", "cpu").model
    out = {}
    for k, t in texts.items():
        say(f"  embedding {len(t)} {k} prompts with the base model")
        out[k] = {"embedding": _embed_and_loss(base, tokenizer, t, 128, False)[0]}
    del base
    tuned = load_trained(open_run_dir(parent_dir), "cpu").model
    for k, t in texts.items():
        say(f"  scoring {len(t)} {k} prompts with the tuned model")
        out[k]["loss"] = np.asarray(_embed_and_loss(tuned, tokenizer, t, 128, True)[1])
    np.savez(cache, **{k: np.asarray(v, dtype=object) for k, v in out.items()})
    return out


def trial(pools, features, vocabulary, tokenizer_len, shift: str, n: int, seed: int) -> dict:
    from leantune.drift import stats

    rng = np.random.default_rng(seed)
    model_ok = n <= MODEL_SIGNAL_MAX_N
    ref_pool = 2 * MODEL_SIGNAL_MAX_N if model_ok else len(pools["reference"])
    if shift == "none":  # two disjoint samples of one pool
        picks = rng.choice(ref_pool, 2 * n, replace=False)
        ref_i, cur_i, cur_key = picks[:n], picks[n:], "reference"
    else:
        ref_i = rng.choice(ref_pool, n, replace=False)
        cur_pool = MODEL_SIGNAL_MAX_N if model_ok else len(pools[shift])
        cur_i, cur_key = rng.choice(cur_pool, n, replace=False), shift
    ref = [pools["reference"][i] for i in ref_i]
    cur = [pools[cur_key][i] for i in cur_i]
    ref_text, cur_text = [_user(p) for p in ref], [_user(p) for p in cur]
    signals = [stats.length([tokenizer_len(t) for t in ref_text], [tokenizer_len(t) for t in cur_text]),
               stats.oov(vocabulary, ref_text, cur_text),
               stats.classifier(ref_text, cur_text, permutations=50, seed=seed)]
    if model_ok:
        f_ref, f_cur = features["reference"], features[cur_key]
        signals.append(stats.mmd(f_ref["embedding"][ref_i], f_cur["embedding"][cur_i], permutations=100, seed=seed))
        signals.append(stats.loss(f_ref["loss"][ref_i], f_cur["loss"][cur_i]))
    stats.holm(signals, ALPHA)
    return {"any": any(s.drifted for s in signals), **{s.name: s.drifted for s in signals}}


def detection(parent_dir: Path, results: dict) -> None:
    from leantune.models.loading import load_tokenizer

    pools, vocabulary = prompt_pools(parent_dir)
    features = model_features(pools, parent_dir)
    tokenizer = load_tokenizer("smollm2-135m")

    def tokenizer_len(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    table = results.setdefault("detection", {})
    for shift in ("none", "tweets", "spam-only", "length", "vocabulary"):
        for n in SIZES:
            key = f"{shift}@{n}"
            if key in table:
                continue
            available = len(pools["reference"]) // 2 if shift == "none" else len(pools[shift])
            if n > available:  # e.g. spam-only: the dataset has ~650 spam messages
                table[key] = {"shift": shift, "n": n, "skipped": f"the pool holds {available} prompts"}
                continue
            seeds = NULL_SEEDS if shift == "none" else SHIFT_SEEDS
            started = time.perf_counter()
            outcomes = [trial(pools, features, vocabulary, tokenizer_len, shift, n, seed) for seed in range(seeds)]
            rates = {name: float(np.mean([o[name] for o in outcomes if name in o]))
                     for name in outcomes[0]}
            table[key] = {"shift": shift, "n": n, "seeds": seeds, "rates": rates,
                          "seconds": round(time.perf_counter() - started, 1)}
            say(f"  {key}: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items()))
            write_results(RESULTS, results)


# ------------------------------------------------------------------ update
ARMS = {  # name -> (slug, overrides on top of the `train --from` defaults)
    "new rows only": ("new-only", {"forgetting.replay_fraction": 0, "forgetting.ewc_lambda": 0}),
    "+ replay": ("replay", {"forgetting.ewc_lambda": 0}),
    "+ replay + EWC (the train --from defaults)": ("replay-ewc", {}),
}
NEW_DATA = {"data.train": "tweets-sentiment", "cost.usd_per_hour": PRICE}


def update(parent_dir: Path, results: dict) -> None:
    from leantune.evaluation.update import compare_with_parent
    from leantune.models.inference import load_trained
    from leantune.runs.ledger import row_for
    from leantune.runs.rundir import open_run_dir

    arms = results.setdefault("update", {})
    parent = open_run_dir(parent_dir)

    def score(name: str, run_dir: Path, steps: int, new_rows=None) -> None:
        """An update's own comparison (train --from wrote update.json), or a fresh one for the model from scratch."""
        run = open_run_dir(run_dir)
        row = row_for(run_dir)
        if new_rows is None:
            report = json.loads((run_dir / "update.json").read_text())
        else:
            trained = load_trained(run, "cpu")
            report = compare_with_parent(run, parent, trained.model, trained.tokenizer, row["cost_usd"], note=say,
                                         new_rows=new_rows)
        arms[name] = {**_arm_summary(report), "billed_seconds": row["wall_s"], "cost_usd": row["cost_usd"],
                      "steps": steps, "eval_seconds": report["eval_seconds"]}
        write_results(RESULTS, results)

    for name, (slug, extra) in ARMS.items():
        if name not in arms:
            say(f"update arm: {name}")
            score(name, train_cached(slug, {**NEW_DATA, **extra}, parent_dir), PARENT["training.max_steps"])
    name = "from scratch on old + new"
    if name not in arms:
        from leantune.data import load_splits, run_splits

        say(f"update arm: {name}")
        old_rows = run_splits(parent.config()).train
        # the rows and held-out split the children trained and were scored on (their config: the parent's data settings)
        splits = load_splits("tweets-sentiment", None, PARENT["data.eval_size"], PARENT["training.seed"],
                             PARENT["data.max_train_examples"])
        combined = WORK / "old-plus-new.jsonl"
        combined.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n" for e in old_rows + splits.train))
        steps = 2 * PARENT["training.max_steps"]  # the parent's steps and the update's, paid again
        run_dir = train_cached("scratch", {**PARENT, "data.train": str(combined), "data.eval_size": 0,
                                           "data.max_train_examples": len(old_rows) + len(splits.train),
                                           "training.max_steps": steps})
        score(name, run_dir, steps, new_rows=splits.eval)


def _arm_summary(report: dict) -> dict:
    f = report["forgetting"]
    return {"gain_points": report["gain"]["change"], "gain_ci": report["gain"]["ci"],
            "tweets_accuracy": {"parent": report["gain"]["parent"], "child": report["gain"]["child"]},
            "retention_points": report["retention"]["change"], "retention_ci": report["retention"]["ci"],
            "sms_accuracy": {"parent": report["retention"]["parent"], "child": report["retention"]["child"]},
            "forgetting_points": f["points"] if f else None, "forgetting_ci": f["ci"] if f else None,
            "usd_per_point": report["usd_per_point"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("detection", "update", "both"), default="both")
    args = parser.parse_args()
    results = load_results(RESULTS)
    results["settings"] = {"alpha": ALPHA, "sizes": SIZES, "null_seeds": NULL_SEEDS, "shift_seeds": SHIFT_SEEDS,
                           "model_signals_up_to_n": MODEL_SIGNAL_MAX_N, "usd_per_hour": PRICE, "parent": PARENT}
    say("parent: LoRA on sms-spam (trained once per commit)")
    parent_dir = train_cached("parent", PARENT)
    if args.part in ("update", "both"):
        update(parent_dir, results)
    if args.part in ("detection", "both"):
        detection(parent_dir, results)
    write_results(RESULTS, results)
    print_tables(results)


def print_tables(results: dict) -> None:
    det = results.get("detection", {})
    if det:
        names = ("any", "length", "oov", "classifier", "mmd", "loss")
        print("| shift | n | " + " | ".join(names) + " |")
        print("|---" * (2 + len(names)) + "|")
        for r in det.values():
            if "rates" not in r:
                print(f"| {r['shift']} | {r['n']} | not measured: {r['skipped']} |")
                continue
            print(f"| {r['shift']} | {r['n']} | " + " | ".join(f"{r['rates'][k]:.0%}" if k in r["rates"] else "-"
                                                            for k in names) + " |")
    for name, a in results.get("update", {}).items():
        print(f"{name}: gain {a['gain_points']:+.1f} [{a['gain_ci'][0]:+.1f}, {a['gain_ci'][1]:+.1f}], retention "
              f"{a['retention_points']:+.1f} [{a['retention_ci'][0]:+.1f}, {a['retention_ci'][1]:+.1f}], forgetting "
              f"{a['forgetting_points']:+.1f}, {a['billed_seconds']:.0f} s, ${a['cost_usd']:.4f}")


if __name__ == "__main__":
    main()
