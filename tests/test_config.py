"""One YAML config, validated, with --set overrides and readable errors."""

import pytest
import yaml
from typer.testing import CliRunner

from icam.cli import app
from icam.config import Config, ConfigError, as_saved, load_config

runner = CliRunner()


def test_defaults_are_the_papers():
    config = load_config()
    assert config.loss.content_adversarial == 1 and config.loss.domain_adversarial == 1
    assert config.loss.classification == 10 and config.loss.kl_attribute == 0.01
    assert config.loss.fa_map_l1 == 10 and config.loss.latent_regression == 1
    assert config.loss.reconstruction_l1 == config.loss.cycle_l2 == 100
    assert config.loss.domain_classification_discriminator == 1 and config.loss.domain_classification == 5
    assert config.train.lr == 1e-4 and config.train.content_discriminator_lr == 4e-5
    assert tuple(config.train.betas) == (0.5, 0.999)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ntrain:\n  steps: 10\n  lr: 0.001\n")
    config = load_config(path, ["train.steps=20", "data.image_size=128", "runtime.precision=bf16-mixed"])
    assert (config.seed, config.train.steps, config.train.lr) == (3, 20, 0.001)
    assert config.data.image_size == 128 and config.runtime.precision == "bf16-mixed"


def test_paths_with_a_hash_or_colon_survive_flags_and_overrides(tmp_path):
    """A folder named 'study #2' is common; YAML would read '#2…' as a comment and drop it."""
    folder = tmp_path / "study #2: T1"
    config = load_config(None, [f"out_dir={tmp_path / 'runs #1'}", "data.kind=csv", "data.shape=[16,16]"],
                         {"data.csv": folder / "cohort.csv", "name": "a: b", "train.steps": 7})
    assert config.data.csv == str(folder / "cohort.csv") and config.out_dir == str(tmp_path / "runs #1")
    assert (config.name, config.train.steps) == ("a: b", 7)
    assert load_config(None, ["train.steps=5"], {"train.steps": 7}).train.steps == 5  # --set wins over flags


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.stpes=5"])
    message = str(e.value)
    assert "train.stpes" in message and "steps" in message and "images_per_class" in message


def test_ill_typed_value_names_the_key():
    with pytest.raises(ConfigError, match=r"'train\.steps'.*'many'"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="image_size"):
        load_config(None, ["data.image_size=60"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_print_defaults_round_trips():
    result = runner.invoke(app, ["config", "--print-defaults"])
    assert result.exit_code == 0
    assert Config.model_validate(yaml.safe_load(result.stdout)) == Config()
    assert "# λM on ‖translated − input‖₁" in result.stdout  # each key with its description


def test_print_defaults_for_your_own_cohort_is_a_valid_csv_config(tmp_path):
    result = runner.invoke(app, ["config", "--print-defaults", "--kind", "csv"])
    assert result.exit_code == 0
    (tmp_path / "my.yaml").write_text(result.stdout)
    config = load_config(tmp_path / "my.yaml", ["data.csv=mine.csv", "data.classes=[CN, AD]"])
    assert config.data.kind == "csv" and config.data.classes == ["CN", "AD"]
    assert "# the label values that are classes" in result.stdout


def test_a_data_section_of_another_kind_is_one_line(tmp_path):
    (tmp_path / "squares.yaml").write_text(runner.invoke(app, ["config", "--print-defaults"]).stdout)
    with pytest.raises(ConfigError, match=r"data.image_size, .* belong to another data.kind, not csv.*--kind csv"):
        load_config(tmp_path / "squares.yaml", ["data.kind=csv", "data.csv=a.csv", "data.shape=[64,64]"])


def test_shipped_configs_are_valid_and_run_anywhere():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.glob("configs/*.yaml")):
        assert load_config(path).runtime.accelerator == "auto", path


def test_cli_config_error_is_one_line_and_a_hint():
    result = runner.invoke(app, ["config", "--set", "loss.fa_map=3"])
    assert result.exit_code == 2
    assert "unknown key 'loss.fa_map'" in result.stderr and "fa_map_l1" in result.stderr
    assert "Traceback" not in result.output and "hint:" in result.stderr


def test_a_saved_config_keeps_the_model_it_was_made_with():
    """A run's config from before model.preset is the paper's model; one from before a later key
    holds what that key was then, not today's default."""
    before_presets = as_saved({"model": {"width": 8}})["model"]
    assert (before_presets["translation"], before_presets["discriminator_real_fake"]) == ("image", "shared")
    before_judges = as_saved({"model": {"preset": "icam", "translation": "residual"}})["model"]
    assert (before_judges["translation"], before_judges["discriminator_real_fake"],
            before_judges["discriminator_centred"]) == ("residual", "shared", False)
    today = load_config(None, []).model.model_dump(mode="json")
    assert as_saved({"model": today})["model"] == today


def test_the_papers_model_is_one_setting_and_keys_beside_it_win():
    paper = load_config(None, ["model.preset=paper"]).model
    assert (paper.translation, paper.generator_norm, paper.attribute_channels, paper.attribute_injection,
            paper.attribute_sampling, paper.discriminator_spectral_norm, paper.discriminator_real_fake,
            paper.discriminator_centred, paper.upsampling) == (
        "image", "instance", 1, "input", "prior", False, "shared", False, "transposed")
    icam_model = load_config(None, []).model
    # icam's judges are spectrally normalised, one per class and blind to brightness, and its
    # generator up-samples without a checkerboard
    assert icam_model.discriminator_spectral_norm and icam_model.upsampling == "resize"
    assert (icam_model.discriminator_real_fake, icam_model.discriminator_centred) == ("per-class", True)
    assert load_config(None, ["model.preset=paper", "model.translation=residual"]).model.translation == "residual"
    with pytest.raises(ConfigError, match=r"'model.preset'.*'icam' or 'paper'"):
        load_config(None, ["model.preset=authors"])
