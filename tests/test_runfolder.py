"""The run folder has one owner: `tunekit.runfolder` names its files, reads the saved config leniently (a run
written by another tunekit version stays loadable) and pins the chat template training used."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import yaml

import tunekit
from train_helpers import make_project, run_in_process
from tunekit.config import ProjectConfig, dump_config
from tunekit.errors import ConfigError, UserError
from tunekit.runfolder import DataFolder, RunFolder, chat_template_hash

SOURCE = Path(tunekit.__file__).parent
# Names only runfolder.py may spell: every other module asks a RunFolder (or EvalFolder, DataFolder).
RUN_FILE_NAMES = ("manifest.json", "summary.json", "eval.json", "config.yaml", "splits.json", "data_report.json",
                  "data_report.md", "model_card.md")
FUTURE_KEYS = ("some_future_section", "training.some_future_key", "serve.another_future_key")
OTHER_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def saved_config(folder: Path, **sections: dict) -> RunFolder:
    """A RUN/config.yaml as `tunekit train` writes it, with `sections` merged over it."""
    raw = yaml.safe_load(dump_config(ProjectConfig()))
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values} if isinstance(values, dict) else values
    folder.mkdir(parents=True, exist_ok=True)
    run = RunFolder(folder)
    run.config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return run


def add_future_keys(run: RunFolder) -> None:
    """What a newer tunekit might have written into config.yaml: one new section and two new keys."""
    raw = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    raw["some_future_section"] = {"enabled": True}
    raw["training"]["some_future_key"] = 1
    raw["serve"]["another_future_key"] = "x"
    run.config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")


def warned_keys(messages: list[str]) -> list[str]:
    return sorted(key for message in messages for key in FUTURE_KEYS if f"'{key}'" in message)


# -- the saved config ------------------------------------------------------------------------------------
def test_unknown_saved_keys_are_warned_once_each_and_dropped(tmp_path):
    run = saved_config(tmp_path, some_future_section={"enabled": True}, training={"some_future_key": 1,
                       "learning_rate": 0.005}, serve={"another_future_key": "x"})
    messages: list[str] = []
    cfg = run.config(say=messages.append)
    assert len(messages) == 3 and warned_keys(messages) == sorted(FUTURE_KEYS)
    assert all(str(run.config_path) in m for m in messages)
    assert cfg.training.learning_rate == 0.005  # the known keys around the unknown ones are kept
    assert not hasattr(cfg.training, "some_future_key")


def test_a_saved_config_this_version_wrote_loads_silently(tmp_path):
    run = saved_config(tmp_path, training={"learning_rate": 0.005})
    messages: list[str] = []
    assert run.config(say=messages.append).training.learning_rate == 0.005
    assert messages == []


@pytest.mark.parametrize("future", [False, True])
def test_an_invalid_known_value_still_fails(tmp_path, future):
    extra = {"some_future_key": 1} if future else {}
    run = saved_config(tmp_path, training={"learning_rate": -1, **extra})
    with pytest.raises(ConfigError, match="learning_rate"):
        run.config(say=lambda _: None)


def test_overrides_apply_on_top_and_an_unknown_override_is_a_typo(tmp_path):
    run = saved_config(tmp_path, training={"some_future_key": 1})
    cfg = run.config(["serve.max_tokens_limit=16"], say=lambda _: None)
    assert cfg.serve.max_tokens_limit == 16
    with pytest.raises(ConfigError, match="max_tokens_limt"):
        run.config(["serve.max_tokens_limt=16"], say=lambda _: None)


def test_a_folder_without_config_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match=r"no config\.yaml"):
        RunFolder(tmp_path).config()
    assert not RunFolder(tmp_path).is_finished


def test_data_folder_is_the_run_folders_data_layout(tmp_path):
    run = RunFolder(tmp_path)
    assert run.data == DataFolder(tmp_path / "data")
    assert run.split_path("train") == run.data.split_path("train")
    assert (run.splits_manifest_path, run.data_config_path) == (run.data.splits_manifest_path, run.data.config_path)
    assert (run.data_report_json, run.data_report_md) == (run.data.report_json, run.data.report_md)


# -- a real trained run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> Path:
    config = make_project(tmp_path_factory.mktemp("runfolder"), tiny_model_dir)
    cfg, _ = run_in_process(config)
    return cfg.run_path()


def copy_run(trained: Path, out: Path) -> RunFolder:
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("checkpoints"))
    return RunFolder(out)


def change_template(run: RunFolder) -> None:
    """Edit RUN/tokenizer's chat template where transformers saved it (its own file, or tokenizer_config)."""
    template_file = run.tokenizer_dir / "chat_template.jinja"
    if template_file.exists():
        template_file.write_text(OTHER_TEMPLATE, encoding="utf-8")
        return
    settings = run.tokenizer_dir / "tokenizer_config.json"
    values = json.loads(settings.read_text(encoding="utf-8"))
    values["chat_template"] = OTHER_TEMPLATE
    settings.write_text(json.dumps(values), encoding="utf-8")


def test_training_writes_what_the_run_folder_names(trained):
    run = RunFolder(trained)
    assert run.is_finished and run.weights_kind == "adapter"
    assert run.summary()["steps"] == 8
    assert run.manifest()["data"] == run.splits_manifest()
    assert run.trained_template_hash() == chat_template_hash(run.tokenizer())
    assert run.data_report()["splits"] == run.splits_manifest()["splits"]


def test_a_run_from_another_version_loads_and_keeps_its_template(trained, tmp_path, capsys):
    from tunekit.models.runs import is_run, load_run
    from tunekit.serve.state import serve_config

    run = copy_run(trained, tmp_path / "older")
    add_future_keys(run)
    assert is_run(run.root)
    loaded = load_run(run.root)
    assert loaded.kind == "adapter" and loaded.cfg.training.max_steps == 8
    said = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert all(f"'{key}'" in said for key in FUTURE_KEYS)
    assert run.check_template(loaded.tokenizer) == run.trained_template_hash()
    cfg = serve_config(str(run.root), [], None, ["serve.max_tokens_limit=16"])
    assert cfg.serve.max_tokens_limit == 16 and cfg.model.name == loaded.cfg.model.name


def test_a_changed_chat_template_is_refused(trained, tmp_path):
    from tunekit.serve.loading import load_served

    run = copy_run(trained, tmp_path / "tampered")
    change_template(run)
    with pytest.raises(UserError, match="differs from the one it was trained with") as info:
        run.check_template()
    assert info.value.where == str(run.tokenizer_dir)
    with pytest.raises(UserError, match="differs from the one it was trained with"):
        load_served(str(run.root), [])


# -- one owner -----------------------------------------------------------------------------------------------
def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are module, class or function docstrings (prose may name files)."""
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, owners) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def spelled_run_files(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = docstrings(tree)
    found = sorted((node.lineno, node.value) for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                   and node.value.endswith(RUN_FILE_NAMES))
    return [f"{path.relative_to(SOURCE)}:{line}: {value!r}" for line, value in found]


def test_only_runfolder_spells_the_run_folders_file_names():
    hits = [hit for path in sorted(SOURCE.rglob("*.py")) if path.name != "runfolder.py"
            for hit in spelled_run_files(path)]
    assert not hits, "ask tunekit.runfolder for these paths instead:\n" + "\n".join(hits)
