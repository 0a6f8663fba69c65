"""`tunekit iterate CONFIG --labelled FILE`: the next round of the loop in one command.

Rows that `tunekit monitor export` wrote and a person labelled are checked (the `data check` rules,
duplicates of the last round's training data, leakage into the pinned test set), saved with their
provenance beside the config, and added to the training data; the next round trains into
RUNS/<project>/round-N and is evaluated on the pinned test set against the previous round and the
baselines. Exit codes as `tunekit eval`: 0 ship, 1 nothing meets the gates, 2 a user error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tunekit.config import ProjectConfig, load_config
from tunekit.console import console, err_console
from tunekit.errors import UserError
from tunekit.runfolder import EvalFolder, ProjectFolder, RunFolder


def iterate(
    config: Path = typer.Argument(..., help="project YAML"),
    labelled: Path = typer.Option(..., "--labelled", help="rows from `tunekit monitor export`, answers fixed"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Add labelled rows to the training data, train the next round and evaluate it on the pinned test set."""
    from tunekit.data.pinned import read_pin
    from tunekit.data.rounds import new_round, read_rounds, save_labelled, write_rounds

    cfg = load_config(config, list(overrides or []))
    project = ProjectFolder.of(cfg)
    pin = read_pin(project) if cfg.data.pin_test else None
    if pin is None:
        raise UserError("the project has no pinned test set, so its rounds could not be compared",
                        where=str(project.pinned_test_path),
                        fix="round 1 first: `tunekit data prepare CONFIG` then `tunekit train CONFIG`")
    rounds = read_rounds(project) or [_first_round(cfg, pin.sha256)]
    previous, number = rounds[-1], rounds[-1]["round"] + 1
    checked = _checked_rows(labelled, cfg, Path(previous["run"]), pin)
    saved = save_labelled(project, number, checked)
    round_cfg = _round_config(cfg, number, [*(r["labelled"] for r in rounds if r["labelled"]), str(saved)],
                              previous)
    say = lambda msg: err_console.print(msg, highlight=False)  # noqa: E731
    say(f"round {number}: {len(checked.kept)} labelled row(s) added ({len(checked.duplicates)} already in the "
        f"training data, {len(checked.leaked)} dropped as pinned-test leaks); training {round_cfg.run_dir}")
    _train(round_cfg, say)
    rounds.append(new_round(number, round_cfg.run_path(), pin.sha256, saved, str(labelled), len(checked.kept)))
    write_rounds(project, rounds)  # before eval, which reads it for the report's rounds table
    result, folder = _evaluate(round_cfg, say)
    _record_metrics(rounds, result, f"round-{previous['round']}")
    write_rounds(project, rounds)
    _print(result, rounds, folder)
    if result.decision.verdict == "nothing_meets":
        raise typer.Exit(1)


def _first_round(cfg: ProjectConfig, test_sha256: str) -> dict[str, Any]:
    """Round 1: the run the project has (cfg.run_dir), trained before any iterate."""
    from tunekit.data.rounds import new_round

    run = cfg.run_path()
    if not RunFolder(run).summary_path.is_file():
        raise UserError("round 1 has not been trained", where=str(run),
                        fix="`tunekit train CONFIG` first: iterate starts from that run")
    return new_round(1, run, test_sha256)


def _checked_rows(path: Path, cfg: ProjectConfig, previous_run: Path, pin: Any) -> Any:
    from tunekit.cli.data import print_problems
    from tunekit.data.prepare import DataErrors
    from tunekit.data.rounds import check_labelled, training_examples

    checked = check_labelled(path, cfg, training_examples(previous_run), pin.examples())
    if checked.problems.errors:
        print_problems(checked.problems, limit=20)
        raise DataErrors(checked.problems)
    if not checked.kept:
        raise UserError(f"nothing to add: all {len(checked.duplicates) + len(checked.leaked)} labelled row(s) are "
                        "already in the training data or repeat pinned test prompts", where=str(path))
    return checked


def _round_config(cfg: ProjectConfig, number: int, labelled: list[str], previous: dict[str, Any]) -> ProjectConfig:
    """cfg with the round's run folder, every round's labelled rows in its training data, and the previous
    round as a candidate of the eval."""
    update = cfg.model_copy(deep=True)
    update.run_dir = str(cfg.run_path().parent / cfg.project / f"round-{number}")
    if update.data.splits is not None:
        update.data.splits.train = [*update.data.splits.train, *labelled]
    else:
        update.data.files = [*update.data.files, *labelled]
    name = f"round-{previous['round']}"
    update.eval.compare = {**update.eval.compare, name: previous["run"]}
    if name not in update.eval.candidates:
        update.eval.candidates = [*update.eval.candidates, name]
    return update


def _train(cfg: ProjectConfig, say: Any) -> None:
    from tunekit.cli.data import load_tokenizer_for
    from tunekit.cli.train import ProgressBar
    from tunekit.data.pinned import describe
    from tunekit.data.prepare import prepare
    from tunekit.train.setup import validate_method
    from tunekit.train.trainer import train

    validated = validate_method(cfg)
    _, prepared = prepare(cfg, load_tokenizer_for(cfg))
    say(describe(prepared.pin, ProjectFolder.of(cfg), kept=True))
    with ProgressBar() as progress:
        train(cfg, say=say, progress=progress, validated=validated)


def _evaluate(cfg: ProjectConfig, say: Any) -> tuple[Any, EvalFolder]:
    from tunekit.eval.runner import check_eval, run_eval
    from tunekit.report import write_report

    plan = check_eval(cfg)
    result = run_eval(plan, say=say)
    write_report(result, plan.folder)
    return result, plan.folder


def _record_metrics(rounds: list[dict[str, Any]], result: Any, previous_name: str) -> None:
    """This round's metrics from its fine-tune; the previous round's too, when it has none yet (round 1 before
    any iterate), as this eval measured it on the same test set."""
    by_name = {c.name: c for c in result.ran}
    tuned = next((c for c in result.ran if c.kind == "finetuned"), None)
    if tuned is not None:
        rounds[-1]["metrics"] = {m: tuned.metrics.get(m) for m in result.metrics}
    if not rounds[-2]["metrics"] and previous_name in by_name:
        rounds[-2]["metrics"] = {m: by_name[previous_name].metrics.get(m) for m in result.metrics}


def _print(result: Any, rounds: list[dict[str, Any]], folder: EvalFolder) -> None:
    from tunekit.cli.eval import VERDICT_STYLE

    for warning in result.warnings:
        err_console.print(f"[yellow]warning[/]: {warning}", highlight=False)
    table = Table(title=f"rounds on the pinned test set (sha256 {result.test_split.sha256[:12]}...)")
    for column in ("round", "rows added", *result.metrics):
        table.add_column(column)
    for entry in rounds:
        values = [_shown(entry["metrics"].get(m)) for m in result.metrics]
        table.add_row(str(entry["round"]), str(entry["rows_added"]), *values)
    console.print(table)
    decision = result.decision
    console.print(f"[{VERDICT_STYLE[decision.verdict]}]{decision.headline}[/]", highlight=False)
    for reason in decision.reasons:
        console.print(f"  - {reason}", highlight=False)
    console.print(f"report: {folder.report_md}", highlight=False)


def _shown(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)
