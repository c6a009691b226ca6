import pytest

from leantune.config import RunConfig, load_config, parse_override
from leantune.errors import ConfigError


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    config = RunConfig()
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 1e-3\n  max_steps: 5\nmethod:\n  r: 4\n")
    config = load_config(path, ["training.lr=2e-4", "method.target_modules=[q_proj, v_proj]"])
    assert config.training.lr == pytest.approx(2e-4)
    assert config.training.max_steps == 5
    assert config.method.r == 4
    assert config.method.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_suggests_the_closest_valid_one():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["training.lrr=1e-4"])
    assert "unknown key 'training.lrr'" in str(e.value)
    assert "did you mean 'training.lr'" in str(e.value)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="unknown key 'trainig'.*did you mean 'training'"):
        load_config(None, ["trainig.lr=1e-4"])


def test_ill_typed_value_says_what_was_expected():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["training.micro_batch_size=lots"])
    assert "'training.micro_batch_size'" in str(e.value) and "integer" in str(e.value)


def test_out_of_range_value():
    with pytest.raises(ConfigError, match="training.lr"):
        load_config(None, ["training.lr=-1"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_unreadable_yaml_points_at_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  lr: 1e-3\n  max_steps: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:" in str(e.value) and "Cannot read YAML" in str(e.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(path)


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("training.lr")


def test_autocast_off_means_off_where_yaml_reads_a_boolean(tmp_path):
    """YAML 1.1 reads a bare `off` as false; `training.autocast=off` and `autocast: off` must still mean 'off'."""
    from leantune.config import load_config

    assert load_config(None, ["training.autocast=off"]).training.autocast == "off"
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  autocast: off\n")
    assert load_config(path).training.autocast == "off"
    with pytest.raises(ConfigError, match="'auto', 'bf16', 'fp16' or 'off'"):
        load_config(None, ["training.autocast=on"])


def test_a_method_with_a_measured_learning_rate_gets_it_unless_one_is_given():
    from leantune.config import load_config

    assert load_config(None, ["method.name=adalora"]).training.lr == 1e-2
    assert load_config(None, ["method.name=adalora", "training.lr=3e-4"]).training.lr == 3e-4
    for family in ("lora", "dora", "qlora", "qlora-gguf"):  # measured for LoRA (bench/results/quality_lora_lr.json)
        assert load_config(None, [f"method.name={family}"]).training.lr == 1e-3
    assert load_config(None, ["method.name=full"]).training.lr == 2e-4  # training.lr's own default
    assert load_config(None, ["method.name=ia3"]).training.lr == 1e-2
