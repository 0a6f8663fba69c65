from pathlib import Path

import pytest

from tunekit.config import load_config
from tunekit.errors import ConfigError, UserError


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
