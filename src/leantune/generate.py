"""`leantune generate`: a reply from a base model or a finished run, through the model's chat template,
stopping at the end of the assistant's turn."""

from __future__ import annotations

import torch

from .data.tokenize import end_of_turn_ids
from .models.inference import load_trained
from .models.loading import detected_device, load_base
from .runs.lookup import find_run


def load_for_inference(spec: str, device: str | None = None, runs_dir: str = "runs"):
    """(model, tokenizer) for a run (directory, id or name, or a registry name@stage / name@vN: base + its
    adapter, models/inference.py) or a base-model spec, on the detected device unless one is given."""
    found = find_run(spec, runs_dir, models_too=True)
    if found is not None:
        trained = load_trained(found.run, device)
        return trained.model, trained.tokenizer
    base = load_base(spec, "auto", device or detected_device()[0])
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


def generate(spec: str, prompt: str, max_new_tokens: int = 128, system: str | None = None,
             runs_dir: str = "runs") -> str:
    model, tokenizer = load_for_inference(spec, runs_dir=runs_dir)
    return generate_reply(model, tokenizer, prompt, max_new_tokens, system)
