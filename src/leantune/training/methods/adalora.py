"""AdaLoRA (Zhang et al. 2023) through PEFT: SVD-shaped P, E, Q per layer whose total rank shrinks from method.r
to method.target_r while training, moved to the layers where it matters (sensitivity |w * grad|).

PEFT prunes only when `update_and_allocate` is called between the optimizer step and zero_grad (trainers that
skip it silently train plain LoRA: PEFT #1327, #1801), and adds the orthogonality regulariser only inside its own
forward with labels, which our label-only loss path does not use: both hooks are here. The allocator's
statistics go into every checkpoint, so a resumed run prunes exactly like an uninterrupted one."""

from __future__ import annotations

import torch
from peft import AdaLoraConfig

from .lora import LoRA


def _inner(model):
    """The PEFT AdaLoraModel inside `model`."""
    return model.base_model


def ranks(model) -> dict[str, int]:
    """Current rank of every AdaLoRA layer: the number of singular values (E entries) not pruned to zero."""
    found = {}
    for name, p in model.named_parameters():
        if ".lora_E." in name:
            layer = name.split(".lora_E.")[0].removeprefix("base_model.model.")
            found[layer] = int((p.detach() != 0).sum())
    return found


def orthogonality_penalty(model) -> torch.Tensor:
    """The mean over the P and Q matrices of ||M M^T - I||_F (rows of P's transpose, columns of Q): keeps them
    near-orthogonal, so E holds the singular values."""
    terms = []
    for name, p in model.named_parameters():
        if p.requires_grad and (".lora_A." in name or ".lora_B." in name):
            m = p if ".lora_A." in name else p.T  # A: r x d_in, B: d_out x r -> both as r x d
            gram = m @ m.T
            terms.append(torch.linalg.norm(gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype), ord="fro"))
    return torch.stack(terms).mean() if terms else torch.zeros(())


class AdaLoRA(LoRA):
    name = "adalora"

    def describe(self) -> str:
        return f"AdaLoRA r={self.config.r} -> {self.config.target_r}" + (" rsLoRA" if self.config.rslora else "")

    def schedule(self, total_steps: int) -> dict:
        """PEFT's schedule in steps, from the config's fractions of this run: pruning starts after tinit steps, the
        ranks freeze for the last tfinal, and the budget is reallocated every deltaT steps in between."""
        m = self.config
        # the config already holds tinit + tfinal below 1, so rounding down leaves at least one step to prune in
        return {"tinit": int(m.tinit * total_steps), "tfinal": int(m.tfinal * total_steps),
                "deltaT": m.delta_t or max(1, total_steps // 100), "total_step": total_steps}

    def peft_config(self, total_steps: int):
        m = self.config
        return AdaLoraConfig(init_r=m.r, target_r=m.target_r, **self.schedule(total_steps),
                             orth_reg_weight=m.orth_reg_weight, **self.common_peft_fields())

    def warnings(self, total_steps: int) -> list[str]:
        s = self.schedule(total_steps)
        pruning = s["total_step"] - s["tinit"] - s["tfinal"]
        if pruning < 20:
            return [f"AdaLoRA: this run has {pruning} steps to cut the rank budget from r={self.config.r} to "
                    f"target_r={self.config.target_r} in (of {total_steps}); the budget moves in jumps and the "
                    "sensitivity estimates have little history. Train longer, or use method.name=lora."]
        return []

    def before_optimizer_step(self, model, backward) -> None:
        if self.config.orth_reg_weight:
            backward(self.config.orth_reg_weight * orthogonality_penalty(model))

    def after_optimizer_step(self, model, step: int) -> None:
        _inner(model).update_and_allocate(step)

    def log(self, model, record: dict, run, step: int, total_steps: int) -> None:
        current = ranks(model)
        record["rank_budget"] = sum(current.values())
        every = max(1, total_steps // 20)
        if step % every == 0 or step == total_steps or step == 1:
            run.append_jsonl("adalora_ranks.jsonl", {"step": step, "ranks": current})

    def state(self, model) -> dict:
        inner = _inner(model)
        ra = inner.rankallocator
        pattern = inner.peft_config[inner.trainable_adapter_name].rank_pattern or {}
        return {"ipt": dict(ra.ipt), "exp_avg_ipt": dict(ra.exp_avg_ipt), "exp_avg_unc": dict(ra.exp_avg_unc),
                "rank_pattern": {k: torch.tensor(v) for k, v in pattern.items()}}

    def load_state(self, model, state: dict) -> None:
        if not state:
            return
        inner = _inner(model)
        ra = inner.rankallocator
        ra.ipt, ra.exp_avg_ipt, ra.exp_avg_unc = dict(state["ipt"]), dict(state["exp_avg_ipt"]), dict(state["exp_avg_unc"])
        if state.get("rank_pattern"):
            inner.peft_config[inner.trainable_adapter_name].rank_pattern = {k: v.tolist() for k, v in state["rank_pattern"].items()}
