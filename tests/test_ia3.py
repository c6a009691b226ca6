"""IA3 as a method like the others: it trains (loss falls), saves a PEFT adapter that the inference loader, the
merged export and the server load; its LoRA-GGUF form is refused."""

import json

import pytest
import torch
from conftest import tiny_overrides

from leantune.errors import UserError
from leantune.export.api import export
from leantune.models.inference import load_trained
from leantune.runs.rundir import open_run_dir
from leantune.training.api import train


def test_ia3_trains_saves_exports_and_serves(tiny_model_dir, chat_file, tmp_path):
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs",
                                        **{"method.name": "ia3", "training.lr": 3e-2, "training.max_steps": 12}))
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses[-1] < losses[0] * 0.7, losses
    config = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3" and set(config["target_modules"]) == {"k_proj", "v_proj", "down_proj"}
    run = open_run_dir(result.run_dir)
    trained = load_trained(run, "cpu")
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        tuned = trained.model(ids).logits
        base = trained.model.get_base_model()
        with trained.model.disable_adapter():
            plain = base(ids).logits
    assert not torch.allclose(tuned, plain)  # the adapter changes the model
    record = export(str(result.run_dir), "hf", out=tmp_path / "hf", say=lambda _: None)
    assert record.check["passed"]
    with pytest.raises(UserError, match="has no LoRA-GGUF form"):
        export(str(result.run_dir), "gguf-lora", out=tmp_path / "gl", say=lambda _: None)
    from leantune.serve.adapters import AdapterNames
    from leantune.serve.engine import Engine

    names = AdapterNames(str(tiny_model_dir), str(tiny_model_dir), str(tmp_path / "runs"))
    target = names.resolve_reference(str(result.run_dir))
    assert target.method == "ia3" and not target.batched
    engine = Engine(str(tiny_model_dir), "float32", "cpu", say=lambda _: None)
    engine.ensure_loaded(target)
    with torch.no_grad():
        assert torch.allclose(engine.merged[target.key](ids).logits, tuned, atol=1e-5)
