"""How many tokens a fine-tune will process: given (`20M`), or counted from a dataset x epochs."""

from __future__ import annotations

import re
from pathlib import Path

from ..data import load_examples
from ..data.tokenize import render_ids
from ..errors import ConfigError

_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
CHARS_PER_TOKEN = 4.0  # rough English BPE average; used only when the model's tokenizer is not at hand
TEMPLATE_TOKENS_PER_MESSAGE = 4  # role markers and separators of a typical chat template


def parse_token_count(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbBtT]?)\s*", str(text))
    if not m:
        raise ConfigError(f"--tokens '{text}' is not a count like 20M, 1.5B or 300000.")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value <= 0:
        raise ConfigError("--tokens must be positive.")
    return value


def count_dataset_tokens(dataset: str, tokenizer_dir: Path | None = None) -> tuple[float, str]:
    """(tokens for one epoch, how they were counted)."""

    examples = load_examples(dataset)
    if tokenizer_dir is not None and (tokenizer_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer  # only here: plan stays torch-free otherwise

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.chat_template:
            total = sum(len(render_ids(tokenizer, e.messages, add_generation_prompt=False)) for e in examples)
            return float(total), f"counted with the model's tokenizer over {len(examples):,} examples"
    chars = sum(len(m["content"]) for e in examples for m in e.messages)
    messages = sum(len(e.messages) for e in examples)
    estimate = chars / CHARS_PER_TOKEN + messages * TEMPLATE_TOKENS_PER_MESSAGE
    return estimate, f"estimated at {CHARS_PER_TOKEN:g} characters/token over {len(examples):,} examples (no tokenizer for this model here)"
