"""`leantune generate`: a reply from a base model or a finished run, through the model's chat template,
stopping at the end of the assistant's turn."""

from __future__ import annotations

from pathlib import Path

import torch

from .data.tokenize import end_of_turn_ids
from .models import load_adapter, load_base
from .runs.rundir import open_run_dir


def load_for_inference(spec: str):
    """(model, tokenizer) for a run directory (base + its adapter) or a base-model spec."""
    path = Path(spec)
    if path.is_dir() and (path / "config.yaml").is_file():
        run = open_run_dir(path)
        config = run.config()
        if run.full_model.is_dir():  # full fine-tuning: the run holds a whole model
            tuned = load_base(str(run.full_model), config.model.dtype)
            return tuned.model, tuned.tokenizer
        # a QLoRA adapter was trained over the 4-bit base: serve it over the same weights it learned to correct
        base = load_base(config.model.base, config.model.dtype, quantize_4bit=config.method.name == "qlora")
        return load_adapter(base.model, run.adapter), base.tokenizer
    base = load_base(spec)
    return base.model, base.tokenizer


@torch.no_grad()
def generate_reply(model, tokenizer, prompt: str, max_new_tokens: int = 128, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(next(model.parameters()).device)
    model.eval()
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(end_of_turn_ids(tokenizer)),
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def generate(spec: str, prompt: str, max_new_tokens: int = 128, system: str | None = None) -> str:
    model, tokenizer = load_for_inference(spec)
    return generate_reply(model, tokenizer, prompt, max_new_tokens, system)
