"""What the benchmark scripts share: provenance, result files that never mix code versions, commit-keyed caches.

Every results file carries `_provenance`: the commit it was measured at (with `-dirty` and a hash of the
uncommitted change when the tree was not clean), the exact command, the date and the machine. A results file
from another commit is not added to: a resumed benchmark keeps only what the same code measured. Caches of
finished jobs live under bench/.work/<bench>/<commit>/, so a job is never reused across code versions. No
absolute path of the machine is written: paths inside the repository are stored relative to it, others refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROVENANCE = "_provenance"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


@functools.cache
def code_version() -> str:
    """Computed once per process, at its start: a long benchmark records the code it ran, not what the tree
    held when it finished. The commit, plus `-dirty-<hash of the diff>` when src/ or the bench scripts have uncommitted changes."""
    sent = os.environ.get("LEANTUNE_BENCH_COMMIT")
    if sent:
        # A copy of the tree sent elsewhere (the GPU machine): its .git, if any, may be older than the files, so
        # whoever sent a clean tree of a commit names it here.
        return sent
    if not (REPO / ".git").exists():
        raise SystemExit("no .git here: set LEANTUNE_BENCH_COMMIT to the commit this clean tree is a copy of")
    commit = _git("rev-parse", "HEAD").strip()
    code = ["src", ":(glob)bench/*.py"]  # not bench/results: the file being written is no change of code
    diff = _git("diff", "HEAD", "--", *code)
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *code)
    if diff or untracked:
        return f"{commit}-dirty-{hashlib.sha256((diff + untracked).encode()).hexdigest()[:8]}"
    return commit


def command_line() -> str:
    """The command as typed, with no absolute path of this machine in it: paths in the repository relative to it,
    others (a GPU machine's output folder) by their name only."""
    def shown(arg: str) -> str:
        key, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        path = Path(value)
        if not path.is_absolute():
            return arg
        path = path.resolve()
        return key + sep + (str(path.relative_to(REPO)) if path.is_relative_to(REPO) else f"<elsewhere>/{path.name}")

    return " ".join(["python", shown(str(Path(sys.argv[0]).resolve())), *map(shown, sys.argv[1:])])


def machine() -> str:
    """The CPU and core count, and the GPU with its driver and torch's CUDA when torch sees one."""
    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if "torch" in sys.modules:  # only a benchmark that already imported torch can have used a GPU
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip() or "unknown"
            text += f"; {torch.cuda.get_device_name(0)}, driver {driver}, torch {torch.__version__}"
    return text


def provenance() -> dict:
    return {"commit": code_version(), "command": command_line(), "date": time.strftime("%Y-%m-%d"),
            "machine": machine()}


def load_results(path: Path) -> dict:
    """Earlier results of this benchmark, only when the same code measured them; else an empty dict."""
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    measured_at, now = results.get(PROVENANCE, {}).get("commit"), code_version()
    if measured_at != now:
        print(f"{path.name}: earlier results are from {measured_at or 'an unrecorded commit'}; measuring again at {now}",
              file=sys.stderr)
        return {}
    return results


def work_dir(bench: str) -> Path:
    """bench/.work/<bench>/<code version>/: a cache of finished jobs that the next commit does not see."""
    path = REPO / "bench" / ".work" / bench / code_version()
    path.mkdir(parents=True, exist_ok=True)
    return path


def job_key(job: dict) -> str:
    """A cache name for a job: its id and a hash of its whole configuration."""
    return f"{job.get('id', 'job')}-{hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:10]}"


def portable(value):
    """`value` with paths inside the repository made relative to it; any other absolute path is refused."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and not value.startswith("/"):
        # a path inside a message (an export's notes): the environment's and the repository's prefixes go
        return value.replace(sys.prefix, "<venv>").replace(str(REPO), ".")
    if isinstance(value, str) and value.startswith("/") and len(Path(value).parts) > 2:
        path = Path(value)
        if path.is_relative_to(REPO):
            return str(path.relative_to(REPO))
        raise ValueError(f"results would record the machine path {value!r}; store a name or a repository path")
    return value


def write_results(path: Path, results: dict) -> None:
    """Write a results JSON with its provenance, atomically (a crash never leaves half a file in place)."""
    stamp = provenance()
    earlier = results.get(PROVENANCE, {})
    if earlier.get("commit") == stamp["commit"]:  # one more invocation at the same code: keep every command
        stamp["commands"] = list(dict.fromkeys(earlier.get("commands", [earlier.get("command")]) + [stamp["command"]]))
    results = portable({**results, PROVENANCE: stamp})
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}")


def smollm2_tokenizer(path: Path) -> Path:
    """`path` holding the bundled SmolLM2's tokenizer (saved there once): random-weight benchmark models of any
    vocabulary of at least its 49,152 ids train with it."""
    if not (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        sys.path.insert(0, str(REPO / "src"))
        from leantune.models.loading import hf_dir_for

        AutoTokenizer.from_pretrained(hf_dir_for("smollm2-135m")).save_pretrained(path)
    return path


def text_rows(job: Path, model_dir: Path, spec: dict) -> Path:
    """Plain text that `leantune train` splits into micro_batch x steps pieces of seq_len tokens each (one piece
    more or less where decoding and re-encoding moves a token)."""
    import random

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    words = ["river", "stone", "market", "seven", "quiet", "engine", "garden", "paper", "winter", "silver", "orbit",
             "candle", "harbor", "velvet", "thunder", "meadow", "copper", "lantern", "puzzle", "falcon"]
    rows = []
    for _ in range(spec["micro_batch"] * spec["steps"]):
        text = " ".join(rng.choice(words) for _ in range(spec["seq_len"] * 2))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: spec["seq_len"] - 2]
        rows.append({"text": tokenizer.decode(ids)})
    path = job / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
