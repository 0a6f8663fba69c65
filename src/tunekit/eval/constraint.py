"""The one output constraint every candidate is decoded under (`eval.constrained`), decided before any model loads.

Where it comes from, the first that applies:
1. a JSON schema the project declares: `eval.json_schema` (the json_schema metric's), else `guard.json_schema`
   (the output guardrail's). What the answers must be is already written down, so it wins;
2. inferred from the train split's answers: all of them JSON objects -> a closed schema (schema_infer.py) with
   the label field an enum of the train labels; plain labels (a label task without JSON) -> a choice of them;
3. anything else (free text, some answers JSON and some not) -> none, with the reason recorded.

`auto` applies what this finds; `true` is the same but an error when nothing is found; `false` never constrains.

Baselines and fine-tunes get the same constraint, so the decision compares like with like. The `rag` candidate
is the one that may differ, because grounding asks it to write something more (`rag.citations`):
- `none`: sources are context only, the answer has the task's format: the same constraint;
- `json_field`: the answer is the task's JSON plus a list of source numbers: the schema gains that field
  (required, numbers 1..rag.top_k), so rag is constrained like the rest and still cites;
- `inline`: `[n]` markers may go anywhere in the text, which no schema or label choice allows; forcing them out
  would change what rag is asked, so rag stays unconstrained and its row in the report says why. (So does rag
  with `json_field` citations when the constraint is a label choice or a schema that is not a plain object.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekit.config import ProjectConfig
from tunekit.data.answers import parse_json_output
from tunekit.data.records import Example
from tunekit.data.stats import answers_are_labels
from tunekit.errors import ConfigError
from tunekit.eval.schema_infer import infer_object_schema

if TYPE_CHECKING:
    from tunekit.eval.candidates import CandidateSpec
    from tunekit.generate import Constraint

LABEL_METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class ConstraintPlan:
    mode: str  # eval.constrained as written in eval.json: "auto", "true" or "false"
    kind: str | None  # a tunekit.generate.Constraint's kind (None: no constraint) ...
    value: Any  # ... and its value; kept apart from the engine, which imports torch, until a model loads
    source: str  # where the constraint came from, or why there is none

    @property
    def constraint(self) -> Constraint | None:
        if self.kind is None:
            return None
        from tunekit.generate import Constraint

        return Constraint(self.kind, self.value)  # type: ignore[arg-type]

    @property
    def validity_metric(self) -> str | None:
        """The rate measured with and without the constraint: is the output JSON, or one of the labels."""
        if self.kind is None:
            return None
        return "label_valid" if self.kind == "choice" else "json_valid"

    def for_candidate(self, spec: CandidateSpec, cfg: ProjectConfig) -> tuple[Constraint | None, str | None]:
        """The constraint `spec` is decoded under, and a note when it differs from the others' (see above)."""
        constraint = self.constraint
        if constraint is None or spec.kind != "rag":
            return constraint, None
        from tunekit.rag.grounding import Grounding

        grounding = Grounding.from_config(cfg)
        if grounding.style == "none":
            return constraint, None
        if grounding.style == "inline":
            return None, ("unconstrained: rag.citations is inline, so grounded answers carry [n] markers in the "
                          "text, which the constraint does not allow")
        schema = _with_citation_field(constraint, grounding.field, cfg.rag.top_k)
        if schema is None:
            return None, (f"unconstrained: grounded answers add the citation field '{grounding.field}', which this "
                          f"{constraint.describe()} cannot hold")
        from tunekit.generate import Constraint

        return Constraint.json_schema(schema), f"the same schema plus the citation field '{grounding.field}'"


def decide_constraint(cfg: ProjectConfig, train: list[Example], eval_schema: dict[str, Any] | None) -> ConstraintPlan:
    """What `eval.constrained` asks for, worked out from the config and the train split; a ConfigError for
    `true` when nothing can be decided."""
    mode = {"auto": "auto", True: "true", False: "false"}[cfg.eval.constrained]
    if mode == "false":
        return ConstraintPlan(mode, None, None, "eval.constrained is false")
    kind, value, source = _declared(cfg, eval_schema) or _inferred(cfg, train)
    if kind is None and mode == "true":
        raise ConfigError(f"eval.constrained is true, but no constraint can be decided: {source}",
                          where="eval.constrained",
                          fix="declare the answers' JSON schema in eval.json_schema, or set eval.constrained to "
                              "auto (constrain only when the answers are JSON or labels)")
    return ConstraintPlan(mode, kind, value, source)


def _declared(cfg: ProjectConfig, eval_schema: dict[str, Any] | None) -> tuple[str, Any, str] | None:
    from tunekit.eval.testset import read_schema_file

    if eval_schema is not None:
        return "json_schema", eval_schema, f"the schema declared in eval.json_schema ({cfg.eval.json_schema})"
    if cfg.guard.json_schema:
        schema = read_schema_file((cfg.base_dir / cfg.guard.json_schema).resolve(), "guard.json_schema")
        return "json_schema", schema, f"the schema declared in guard.json_schema ({cfg.guard.json_schema})"
    return None


def _inferred(cfg: ProjectConfig, train: list[Example]) -> tuple[str | None, Any, str]:
    answered = [e for e in train if len(e.messages) > 1 and e.messages[-1]["role"] == "assistant"]
    if not answered:
        return None, None, "the train split has no answers to infer one from"
    parsed = [parse_json_output(e.messages[-1]["content"]) for e in answered]
    objects = [value for value in parsed if isinstance(value, dict)]
    field = cfg.eval.label_field
    if len(objects) == len(answered):
        schema = infer_object_schema(objects, field, cfg.eval.labels)
        label = f", '{field}' one of {len(schema['properties'][field]['enum'])} labels" \
            if field in schema["properties"] else ""
        return "json_schema", schema, f"inferred from {len(answered):,} train answers (JSON objects{label})"
    if objects:
        first = next(e for e, value in zip(answered, parsed) if not isinstance(value, dict))
        return None, None, (f"{len(answered) - len(objects):,} of {len(answered):,} train answers are not JSON "
                            f"objects (the first at {first.where})")
    if field is None and (labels := _labels(cfg, answered)):
        return "choice", tuple(labels), f"the {len(labels)} labels of {len(answered):,} train answers"
    return None, None, "the train answers are free text, neither JSON objects nor labels"


def _labels(cfg: ProjectConfig, train: list[Example]) -> list[str] | None:
    """The label set of a label task (eval.labels, else the train answers), None when it is not one: the data
    says so (answers repeat from a small set) or label metrics do, and the set is no larger than a label set."""
    if cfg.eval.labels:
        return list(cfg.eval.labels)
    answers = sorted({e.messages[-1]["content"] for e in train})
    said = answers_are_labels(train, cfg.data.label_set_max) or any(m in cfg.eval.metrics for m in LABEL_METRICS)
    return answers if said and len(answers) <= cfg.data.label_set_max else None


def _with_citation_field(constraint: Constraint, field: str, top_k: int) -> dict[str, Any] | None:
    """The constraint's object schema with a required list of source numbers in `field`; None when it has no
    object schema to add it to."""
    schema = constraint.value if constraint.kind == "json_schema" else None
    if not (isinstance(schema, dict) and schema.get("type") == "object" and isinstance(schema.get("properties"), dict)):
        return None
    sources = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": top_k}, "maxItems": top_k}
    properties = {**schema["properties"], field: schema["properties"].get(field, sources)}
    required = list(dict.fromkeys([*schema.get("required", []), field]))
    return {**schema, "properties": properties, "required": required}
