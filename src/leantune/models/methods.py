"""Fine-tuning methods: what is trained and how the frozen part is stored.

| method | trained | frozen base | library |
|---|---|---|---|
| lora | low-rank A, B per adapted layer | as loaded (fp32 / bf16) | PEFT |
| dora | LoRA + a magnitude vector per layer (direction and size of W learned apart) | as loaded | PEFT `use_dora` |
| adalora | SVD-shaped P, E, Q whose rank budget shrinks during training | as loaded | PEFT `AdaLoraConfig` + our loop calling `update_and_allocate` every step |
| qlora | LoRA | 4-bit NF4 with double quantisation, de-quantised on the fly | bitsandbytes via transformers, PEFT |
| full | every weight | nothing | torch |

`method.rslora` scales any LoRA-family adapter by alpha/sqrt(r) (rank-stabilised LoRA).
"""

from __future__ import annotations

import torch

from ..config import MethodConfig
from ..errors import ConfigError

METHOD_TITLES = {"lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA (NF4 base)"}


def describe_method(method: MethodConfig) -> str:
    if method.name == "full":
        return "full fine-tuning" + (" (8-bit AdamW)" if method.optimizer == "adamw8bit" else "")
    extra = " rsLoRA" if method.rslora else ""
    if method.name == "adalora":
        return f"AdaLoRA r={method.r} -> {method.target_r}{extra}"
    return f"{METHOD_TITLES[method.name]} r={method.r}{extra}"


def needs_bitsandbytes(method: MethodConfig) -> str | None:
    if method.name == "qlora":
        return "method.name=qlora (4-bit NF4 base weights)"
    if method.optimizer == "adamw8bit":
        return "method.optimizer=adamw8bit"
    return None


def check_method_available(method: MethodConfig, device: str) -> None:
    """Fail before the model is loaded (minutes on a big model) when the method cannot run here."""
    what = needs_bitsandbytes(method)
    if what is None:
        return
    alternative = ("use method.name=lora (the same adapters over an unquantised base; the planner shows the memory "
                   "difference)" if method.name == "qlora" else "use method.optimizer=adamw")
    try:
        import bitsandbytes  # noqa: F401
        from bitsandbytes.functional import quantize_4bit
    except ImportError:
        raise ConfigError(f"{what} needs bitsandbytes, which is not installed (pip install 'leantune[qlora]'). "
                          f"Or {alternative}.") from None
    try:  # the library imports on any machine; whether it has a backend for this device shows when it runs
        quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4", compress_statistics=True)
    except Exception as e:  # noqa: BLE001 - bitsandbytes raises a variety of errors for a missing backend
        raise ConfigError(f"{what}: bitsandbytes {bitsandbytes.__version__} has no working backend for device "
                          f"'{device}' ({type(e).__name__}: {str(e)[:200]}). Or {alternative}.") from None


def quantization_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def _peft_config(method: MethodConfig, total_steps: int):
    from peft import AdaLoraConfig, LoraConfig

    common = dict(r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout, target_modules=method.target_modules,
                  task_type="CAUSAL_LM", bias="none", use_rslora=method.rslora)
    if method.name == "adalora":
        # the config already holds tinit + tfinal below 1, so rounding down leaves at least one step to prune in
        tinit, tfinal = int(method.tinit * total_steps), int(method.tfinal * total_steps)
        common.pop("r")
        return AdaLoraConfig(init_r=method.r, target_r=method.target_r, tinit=tinit, tfinal=tfinal, deltaT=method.delta_t,
                             total_step=total_steps, orth_reg_weight=method.orth_reg_weight, **common)
    return LoraConfig(use_dora=method.name == "dora", **common)


def prepare_4bit_base(model):
    """A 4-bit base as QLoRA trains over it: frozen, with its norms and embeddings upcast to fp32 (PEFT's
    prepare_model_for_kbit_training). Serving does the same, or the adapter would meet bf16 norms it never saw."""
    from peft import prepare_model_for_kbit_training

    # activation checkpointing is ours to switch (training.gradient_checkpointing)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def attach_method(model, method: MethodConfig, seed: int, total_steps: int):
    """The model ready to train with `method`: adapters attached (LoRA family) or every weight unfrozen (full)."""
    from peft import get_peft_model

    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method.name == "qlora":
        model = prepare_4bit_base(model)
    config = _peft_config(method, total_steps)
    # The B matrices start at zero, but A is random: seed it so a run is reproducible from its config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config)
        except ValueError as e:
            if "not found in the base model" in str(e) or "Target modules" in str(e):
                names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
                raise ConfigError(
                    f"method.target_modules={method.target_modules!r} matches no layer of this model. "
                    f"Its linear layers are named: {', '.join(names)} (or use 'all-linear')."
                ) from None
            raise


def make_optimizer(model, method: MethodConfig, lr: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if method.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def quantized_weight_bytes(model) -> tuple[int, int]:
    """(bytes held by the 4-bit layers' weights and quantisation statistics, parameters those layers stand for)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0, 0
    stored = params = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            stored += weight.numel() * weight.element_size()
            state = getattr(weight, "quant_state", None)
            if state is not None:
                stored += state.absmax.numel() * state.absmax.element_size() + state.code.numel() * state.code.element_size()
                nested = getattr(state, "state2", None)
                if nested is not None:
                    stored += nested.absmax.numel() * nested.absmax.element_size() + nested.code.numel() * nested.code.element_size()
                params += int(torch.Size(state.shape).numel())
    return stored, params


# ---------------------------------------------------------------- AdaLoRA


def adalora_model(model):
    """The PEFT AdaLoraModel inside `model`, or None for every other method."""
    from peft.tuners.adalora import AdaLoraModel

    inner = getattr(model, "base_model", None)
    return inner if isinstance(inner, AdaLoraModel) else None


def adalora_ranks(model) -> dict[str, int]:
    """Current rank of every AdaLoRA layer: the number of singular values (E entries) not pruned to zero."""
    ranks = {}
    for name, p in model.named_parameters():
        if ".lora_E." in name:
            layer = name.split(".lora_E.")[0].removeprefix("base_model.model.")
            ranks[layer] = int((p.detach() != 0).sum())
    return ranks


def orthogonality_penalty(model) -> torch.Tensor:
    """AdaLoRA's regulariser keeping P and Q near-orthogonal (so E holds the singular values): the mean over
    the P and Q matrices of ||M M^T - I||_F (rows of P's transpose, columns of Q). PEFT adds it only inside its own
    forward with labels, which our label-only loss path does not use, so we add it in the loop."""
    terms = []
    for name, p in model.named_parameters():
        if p.requires_grad and (".lora_A." in name or ".lora_B." in name):
            m = p if ".lora_A." in name else p.T  # A: r x d_in, B: d_out x r -> both as r x d
            gram = m @ m.T
            terms.append(torch.linalg.norm(gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype), ord="fro"))
    return torch.stack(terms).mean() if terms else torch.zeros(())


def rank_allocator_state(model) -> dict:
    """The sensitivity statistics AdaLoRA's budget decisions depend on, for an exact resume."""
    inner = adalora_model(model)
    if inner is None:
        return {}
    ra = inner.rankallocator
    return {"ipt": dict(ra.ipt), "exp_avg_ipt": dict(ra.exp_avg_ipt), "exp_avg_unc": dict(ra.exp_avg_unc),
            "rank_pattern": {k: torch.tensor(v) for k, v in (inner.peft_config[inner.trainable_adapter_name].rank_pattern or {}).items()}}


def load_rank_allocator_state(model, state: dict) -> None:
    inner = adalora_model(model)
    if inner is None or not state:
        return
    ra = inner.rankallocator
    ra.ipt, ra.exp_avg_ipt, ra.exp_avg_unc = dict(state["ipt"]), dict(state["exp_avg_ipt"]), dict(state["exp_avg_unc"])
    if state.get("rank_pattern"):
        inner.peft_config[inner.trainable_adapter_name].rank_pattern = {k: v.tolist() for k, v in state["rank_pattern"].items()}
