from pathlib import Path

import pytest

from tunekit.config import dump_config, load_config, load_saved_config
from tunekit.errors import ConfigError, UserError
from tunekit.methods import available_methods, check_options_read, get_method


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tunekit.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_relative_data_paths(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  files: [a.jsonl]\n"))
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.data_paths() == [(tmp_path / "a.jsonl").resolve()]
    assert cfg.data.split.seed == 42


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(
        write(tmp_path, "model:\n  max_seq_len: 256\n"),
        ["model.max_seq_len=1024", "data.dedupe.near=false", "data.files=[x.jsonl, y.csv]", "run_dir=runs/x"],
    )
    assert cfg.model.max_seq_len == 1024
    assert cfg.data.dedupe.near is False
    assert cfg.data.files == ["x.jsonl", "y.csv"]
    assert cfg.run_dir == "runs/x"


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data:\n  fromat: auto\n"))
    text = err.value.render()
    assert "data.fromat: unknown key" in text
    assert "did you mean 'format'" in text
    assert "allowed:" in text and "files" in text


def test_bad_value_says_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data:\n  format: xml\n"), ["model.max_seq_len=-3"])
    text = err.value.render()
    assert "data.format" in text and "'messages'" in text and "'xml'" in text
    assert "model.max_seq_len" in text and "-3" in text
    assert "2 invalid config value(s)" in text


def test_split_fractions_must_sum_to_one(tmp_path):
    with pytest.raises(ConfigError, match=r"must be 1\.0"):
        load_config(None, ["data.split.train=0.5"])


def test_bad_override_syntax_and_value_section(tmp_path):
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["model.name"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["run_dir=x", "run_dir.sub=1"])


def test_unknown_column_field_and_pii_kind(tmp_path):
    with pytest.raises(ConfigError, match="allowed: messages"):
        load_config(None, ["data.columns={question: q}"])
    with pytest.raises(ConfigError, match="unknown PII kind"):
        load_config(None, ["data.pii_kinds=[email, ssn]"])


def test_yaml_errors_name_the_line(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, "data:\n  files: [a.jsonl\nmodel: {}\n"))
    assert "tunekit.yaml:" in err.value.render() and "invalid YAML" in err.value.render()
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_starter_config_from_init_is_valid(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunekit.cli.main import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    cfg = load_config(tmp_path / "tunekit.yaml")
    assert cfg.method.name == "lora" and cfg.data.pii == "redact"
    again = CliRunner().invoke(app, ["init"])
    assert again.exit_code != 0


def test_gates_saved_as_a_mapping_by_older_runs_still_load(tmp_path):
    old = load_config(write(tmp_path, "eval:\n  gates: {accuracy: '>= 0.85'}\n"))
    assert old.eval.gates == ["accuracy >= 0.85"]
    assert load_config(write(tmp_path, "eval:\n  gates: {}\n")).eval.gates == []
    with pytest.raises(ConfigError, match=r"eval\.gates"):
        load_config(write(tmp_path, "eval:\n  gates: {accuracy: 'about 0.8'}\n"))


# --------------------------------------------- method options: one a method does not read is an error

# A value other than the default for each method option, as a `key=value` override.
NON_DEFAULT = {"r": "8", "alpha": "8", "dropout": "0.1", "target_modules": "[q_proj]", "num_virtual_tokens": "4",
               "prompt_init_text": "Answer", "trainable_layers": "1", "quant_type": "fp4", "double_quant": "false"}


def test_an_unread_method_option_is_an_error_from_yaml_or_overrides(tmp_path):
    expected = "method.r: 'ia3' does not read this option (ia3 reads: target_modules; "
    for cfg in (load_config(write(tmp_path, "method:\n  name: ia3\n  r: 8\n")),
                load_config(None, ["method.name=ia3", "method.r=8"])):
        with pytest.raises(ConfigError) as err:
            check_options_read(get_method(cfg.method.name), cfg.method)
        assert err.value.render().startswith(expected)
    check_options_read(get_method("lora"), load_config(None, ["method.r=8"]).method)  # LoRA reads it


def test_train_refuses_an_unread_method_option_before_anything_loads(tmp_path, monkeypatch, capsys):
    from cli_helpers import run_in_process

    config = write(tmp_path, f"run_dir: {tmp_path / 'run'}\nmodel:\n  name: {tmp_path / 'no-model'}\n")
    code, output = run_in_process(monkeypatch, capsys, "train", config, "method.name=ia3", "method.r=8")
    assert code == 2 and "Traceback" not in output
    assert "method.r: 'ia3' does not read this option (ia3 reads: target_modules" in " ".join(output.split())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", available_methods())
def test_saved_and_starter_configs_pass_the_option_check(tmp_path, monkeypatch, name):
    """A run's config.yaml lists every method field, defaults included, and a starter config lists the
    LoRA ones: neither trips the check, whichever method it names."""
    from typer.testing import CliRunner

    from tunekit.cli.main import app

    method = get_method(name)
    cfg = load_config(None, [f"method.name={name}", *(f"method.{k}={NON_DEFAULT[k]}" for k in method.options)])
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg), encoding="utf-8")
    reloaded = load_saved_config(saved)
    assert reloaded.method == cfg.method
    assert reloaded.method.model_fields_set == set(type(cfg.method).model_fields)  # every field, as written
    check_options_read(method, reloaded.method)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["init"]).exit_code == 0
    check_options_read(method, load_config(tmp_path / "tunekit.yaml", [f"method.name={name}"]).method)
