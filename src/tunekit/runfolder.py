"""A run folder, in one place: every file name a stage writes or reads there, and typed readers for them.

    RUN/
      config.yaml        the resolved config the run was trained with (older tunekits' keys: warned, ignored)
      manifest.json      what the run was made of (seed, data hashes, libraries, chat-template hash)
      summary.json       what training measured (losses, tokens/s, peak memory)
      adapter/ | model/  the trained weights: a PEFT adapter folder, or full weights
      merged/            an adapter folded into its base model (`tunekit merge`)
      tokenizer/         the tokenizer with the chat template training used
      checkpoints/       resumable training state
      data/              `tunekit data prepare`: the splits, splits.json, data_report.{md,json}, token_lengths.png,
                         config.yaml
      eval/              `tunekit eval`: eval.json, predictions/<candidate>.jsonl, report.{md,html}, plots/
      export/            `tunekit export`: gguf-<quant>/: the .gguf, a LoRA .gguf, Modelfile, export_report.{json,md}
      model_card.md      `tunekit risk`

No other module spells these names: they ask a RunFolder for the path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.config import ProjectConfig, load_saved_config
from tunekit.errors import UserError

if TYPE_CHECKING:
    from tunekit.results import EvalResult, PredictionRow

SPLITS = ("train", "validation", "test")
WEIGHT_FOLDERS = ("adapter", "model", "merged")


def chat_template_hash(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's chat template ('' when it has none): how a run pins its template."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return hashlib.sha256(template.encode()).hexdigest()


@dataclass(frozen=True)
class _Folder:
    """A folder of known files; `root` may be given as a str."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))


@dataclass(frozen=True)
class RunFolder(_Folder):

    # -- what training writes --------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def merged_dir(self) -> Path:
        return self.root / "merged"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    def weights_dir(self, uses_peft: bool) -> Path:
        """Where training saves: adapter/ for PEFT methods, model/ for full weights."""
        return self.adapter_dir if uses_peft else self.model_dir

    @property
    def weights_kind(self) -> str | None:
        """'adapter' or 'model' for a finished run, None before training has saved weights."""
        if self.adapter_dir.is_dir():
            return "adapter"
        return "model" if self.model_dir.is_dir() else None

    @property
    def is_finished(self) -> bool:
        return self.config_path.is_file() and self.weights_kind is not None

    # -- what `data prepare` writes --------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def data(self) -> DataFolder:
        return DataFolder(self.data_dir)

    def split_path(self, name: str) -> Path:
        return self.data.split_path(name)

    @property
    def splits_manifest_path(self) -> Path:
        return self.data.splits_manifest_path

    @property
    def data_config_path(self) -> Path:
        return self.data.config_path

    @property
    def data_report_json(self) -> Path:
        return self.data.report_json

    @property
    def data_report_md(self) -> Path:
        return self.data.report_md

    # -- what `eval` and `risk` write ------------------------------------------------------------------
    @property
    def eval(self) -> EvalFolder:
        """The default eval folder, RUN/eval (`eval.out_dir` may put it elsewhere)."""
        return EvalFolder(self.root / "eval")

    def export_dir(self, fmt: str, quant: str) -> Path:
        """Where `tunekit export` writes one format and type by default, e.g. RUN/export/gguf-q8_0."""
        return self.root / "export" / f"{fmt}-{quant}"

    @property
    def model_card_path(self) -> Path:
        return self.root / "model_card.md"

    # -- typed readers ---------------------------------------------------------------------------------
    def config(self, overrides: Sequence[str] = (), *, say: Any = None) -> ProjectConfig:
        """The saved config, with `key.sub=value` overrides on top. Keys this tunekit does not know (a newer
        or older version wrote them) are warned about one by one and ignored, so a run stays evaluable and
        servable across versions; an unknown key in `overrides` is the user's typo and still fails."""
        if not self.config_path.is_file():
            raise UserError("not a tunekit run: no config.yaml", where=str(self.root),
                            fix="pass the run folder that `tunekit train` printed")
        return load_saved_config(self.config_path, overrides, say=say)

    def manifest(self) -> dict[str, Any] | None:
        return read_json(self.manifest_path)

    def summary(self) -> dict[str, Any] | None:
        return read_json(self.summary_path)

    def splits_manifest(self) -> dict[str, Any] | None:
        return read_json(self.splits_manifest_path)

    def data_report(self) -> dict[str, Any] | None:
        return read_json(self.data_report_json)

    def eval_result(self) -> EvalResult | None:
        """The typed result `tunekit eval` wrote into RUN/eval (None when there is none yet)."""
        return self.eval.result()

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)

    def trained_template_hash(self) -> str | None:
        """The chat-template hash training recorded in manifest.json (None for runs without one)."""
        return (self.manifest() or {}).get("chat_template_sha256")

    def check_template(self, tokenizer: Any | None = None) -> str:
        """The hash of RUN/tokenizer's chat template, after checking it is the one training recorded: a
        run must be evaluated and served with the template it was trained with."""
        current = chat_template_hash(tokenizer if tokenizer is not None else self.tokenizer())
        trained = self.trained_template_hash()
        if trained and trained != current:
            raise UserError("the run's chat template differs from the one it was trained with",
                            where=str(self.tokenizer_dir),
                            fix="restore the tokenizer saved by `tunekit train`, or retrain with the new template")
        return current


@dataclass(frozen=True)
class DataFolder(_Folder):
    """What `tunekit data prepare` writes: RUN/data, or the staging folder that becomes it atomically."""

    def split_path(self, name: str) -> Path:
        return self.root / f"{name}.jsonl"

    @property
    def splits_manifest_path(self) -> Path:
        """Inputs' and splits' SHA-256, rows per split and the split seed."""
        return self.root / "splits.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def report_json(self) -> Path:
        return self.root / "data_report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "data_report.md"

    @property
    def lengths_plot(self) -> Path:
        return self.root / "token_lengths.png"


@dataclass(frozen=True)
class ProjectFolder(_Folder):
    """What a project keeps across its runs and rounds, beside its config file (commit it with the config):

    tunekit-pinned/<project>/
      test.jsonl   the pinned test split, byte for byte what every round's RUN/data/test.jsonl is
      test.json    its SHA-256, rows, when it was pinned and, after `--new-test`, what it replaced
      rounds.json  `tunekit iterate`: each round's run, labelled rows and metrics on the pinned test set
      labelled/    round-N.jsonl: the labelled rows round N added to the training data, with provenance"""

    @classmethod
    def of(cls, cfg: ProjectConfig) -> ProjectFolder:
        return cls(cfg.base_dir / "tunekit-pinned" / cfg.project)

    @property
    def pinned_test_path(self) -> Path:
        return self.root / "test.jsonl"

    @property
    def pinned_record_path(self) -> Path:
        return self.root / "test.json"

    @property
    def rounds_path(self) -> Path:
        return self.root / "rounds.json"

    def labelled_path(self, round_number: int) -> Path:
        return self.root / "labelled" / f"round-{round_number}.jsonl"


@dataclass(frozen=True)
class EvalFolder(_Folder):
    """What `tunekit eval` writes: RUN/eval by default, or `eval.out_dir`."""

    @property
    def result_path(self) -> Path:
        return self.root / "eval.json"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions_path(self, candidate: str) -> Path:
        return self.predictions_dir / f"{candidate}.jsonl"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def result(self) -> EvalResult | None:
        """The typed result written here (None when there is none yet)."""
        from tunekit.results import EvalResult

        return EvalResult.read(self.result_path) if self.result_path.is_file() else None

    def predictions(self, candidate: str, limit: int | None = None) -> list[PredictionRow]:
        """The candidate's per-row answers written here, the first `limit` of them ([] when there are none)."""
        from tunekit.results import read_predictions

        path = self.predictions_path(candidate)
        return read_predictions(path, limit) if path.is_file() else []


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when the file is missing or unreadable (a stage that needs it
    says so in its own words)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
