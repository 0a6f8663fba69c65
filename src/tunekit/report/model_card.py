"""`tunekit risk`: a model card and a risk checklist built only from what tunekit measured in a run folder.

Every checklist item is ✓ (passes), ✗ (fails) or ? (not measured yet), with the evidence it rests on. Nothing
is taken on trust: a missing file makes an item "?" rather than a pass, and a missing owner is the first risk
listed, because a model nobody owns is one nobody will fix.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit.config import ProjectConfig
from tunekit.errors import UserError
from tunekit.io import sha256_file
from tunekit.results import FINETUNED, EvalResult, PredictionRow
from tunekit.runfolder import WEIGHT_FOLDERS, EvalFolder, RunFolder

PASS, FAIL, UNKNOWN = "✓", "✗", "?"
# Licences of base models tunekit knows offline; anything else comes from governance.base_model_license or the
# model folder's README front matter (the Hugging Face convention: `license: apache-2.0`).
KNOWN_LICENSES = {"smollm2": "Apache-2.0"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# A slice is flagged when even the top of its 95% (Wilson) interval trails overall accuracy by more than this:
# a small slice is judged by what its rows can show, rather than ignored below some row count.
SLICE_GAP = 0.10
Z_95 = 1.96


@dataclass
class Item:
    section: str
    title: str
    status: str  # PASS, FAIL or UNKNOWN
    evidence: str
    required: bool = True

    @property
    def blocking(self) -> bool:
        return self.required and self.status != PASS


@dataclass
class Slices:
    """Per-row correctness of one candidate's test predictions, grouped by governance.slices fields."""

    candidate: str | None = None
    scored_rows: int = 0
    overall: float = 0.0
    groups: dict[str, list[tuple[str, int, float]]] = field(default_factory=dict)  # field -> (value, rows, acc)


@dataclass
class RunFacts:
    """What the run folder holds; None where a file is missing or unreadable."""

    run: Path
    cfg: ProjectConfig
    config_path: Path
    data_report: dict[str, Any] | None
    splits: dict[str, Any] | None
    manifest: dict[str, Any] | None
    summary: dict[str, Any] | None
    eval_result: EvalResult | None
    eval_problem: str | None = None  # why an eval result that is there could not be read

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run)

    @property
    def eval_folder(self) -> EvalFolder:
        return self.folder.eval

    def name(self, path: Path) -> str:
        """A run folder file as the card names it: relative to the run (`data/splits.json`)."""
        return path.relative_to(self.run).as_posix()


@dataclass
class ModelCard:
    facts: RunFacts
    items: list[Item]
    slices: Slices


    @property
    def passed(self) -> bool:
        return not any(i.blocking for i in self.items)


def read_run(run: Path, cfg: ProjectConfig, config_path: Path) -> RunFacts:
    folder = RunFolder(run)
    facts = RunFacts(run=run, cfg=cfg, config_path=config_path, data_report=folder.data_report(),
                     splits=folder.splits_manifest(), manifest=folder.manifest(), summary=folder.summary(),
                     eval_result=None)
    try:
        facts.eval_result = folder.eval_result()
    except UserError as exc:  # an unreadable result is not a pass: its items stay "?" and say why
        facts.eval_problem = exc.render()
    return facts


def build_card(facts: RunFacts) -> ModelCard:
    slices = slice_accuracy(facts)
    items = [*_governance(facts), *_privacy(facts), _bias(facts, slices), *_security(facts), _evaluation(facts)]
    return ModelCard(facts=facts, items=items, slices=slices)


# --- governance -------------------------------------------------------------------------------------------


def _governance(f: RunFacts) -> list[Item]:
    gov = f.cfg.governance
    owner = Item("Governance", "A named owner", PASS if gov.owner.strip() else FAIL,
                 f"governance.owner: {gov.owner}" if gov.owner.strip()
                 else "governance.owner is empty: nobody is accountable for this model; set it in the config")
    on_call = Item("Governance", "An on-call contact", PASS if gov.on_call.strip() else FAIL,
                   f"governance.on_call: {gov.on_call}" if gov.on_call.strip()
                   else "governance.on_call is empty: nobody is paged when it misbehaves")
    name, licence = base_model_license(f)
    licence_item = Item("Governance", "Base model licence known", FAIL if licence.startswith("unknown") else PASS,
                        f"{name}: {licence}")
    return [owner, on_call, licence_item, _data_hashes(f)]


def base_model_name(f: RunFacts) -> str:
    return str((f.manifest or {}).get("base_model", {}).get("name") or f.cfg.model.name)


def base_model_license(f: RunFacts) -> tuple[str, str]:
    name = base_model_name(f)
    if f.cfg.governance.base_model_license:
        return name, f.cfg.governance.base_model_license
    for key, licence in KNOWN_LICENSES.items():
        if key in name.lower():
            return name, licence
    folder = Path(str((f.manifest or {}).get("base_model", {}).get("path") or f.cfg.model.name))
    found = _license_in_readme(folder / "README.md")
    return name, found or "unknown: fill governance.base_model_license"


def _license_in_readme(readme: Path) -> str | None:
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    front = re.match(r"---\n(.*?)\n---", text, re.DOTALL)
    found = re.search(r"^license:\s*(\S+)", front.group(1), re.MULTILINE) if front else None
    return found.group(1) if found else None


def _data_hashes(f: RunFacts) -> Item:
    title = "Data and run recorded (hashes, config, versions)"
    if f.splits is None:
        missing = f.name(f.folder.splits_manifest_path)
        return Item("Governance", title, UNKNOWN, f"no {missing}: run `tunekit data prepare`")
    splits = ", ".join(f"{n} {s['rows']} rows sha256 {s['sha256'][:12]}…" for n, s in f.splits["splits"].items())
    manifest = f.name(f.folder.manifest_path)
    if f.manifest is None:
        return Item("Governance", title, UNKNOWN, f"splits: {splits}; no {manifest}: the model is not trained yet")
    weights = str(f.manifest.get("weights_sha256", "?"))[:12]
    return Item("Governance", title, PASS, f"splits: {splits}; trained weights sha256 {weights}…; seed "
                f"{f.manifest.get('seed')}; libraries and config in {manifest}")


# --- privacy ----------------------------------------------------------------------------------------------


def _privacy(f: RunFacts) -> list[Item]:
    title = "PII in the training data handled"
    if f.data_report is None:
        data = Item("Privacy", title, UNKNOWN, f"no {f.name(f.folder.data_report_json)}: run `tunekit data prepare`")
    else:
        pii = f.data_report.get("pii", {})
        found = {k: v for k, v in pii.get("found", {}).items() if v}
        kinds = ", ".join(f"{k} in {v} examples" for k, v in found.items()) or "none found"
        action = pii.get("action", "?")
        handled = not found or action in ("redact", "drop")
        data = Item("Privacy", title, PASS if handled else FAIL,
                    f"found: {kinds}; data.pii: {action} ({pii.get('redacted_examples', 0)} examples redacted)"
                    + ("" if handled else "; PII is in the training data: set data.pii to redact or drop"))
    guard = f.cfg.guard
    redacts = guard.enabled and "pii" in guard.input
    serving = Item("Privacy", "PII in requests handled at serving", PASS if redacts else FAIL,
                   (f"guard input policy pii: {guard.pii_action}" if redacts else
                    "guard.enabled is off or 'pii' is not in guard.input: prompts reach the model unredacted")
                   + "; the request log redacts PII on write", required=False)
    return [data, serving]


# --- bias -------------------------------------------------------------------------------------------------


def slice_accuracy(f: RunFacts) -> Slices:
    """Accuracy per value of each governance.slices field, for the decided (else the fine-tuned) candidate.

    A slice value is looked up in the test row's `meta`, then in its reference answer when that is a JSON
    object (so `slices: [product]` works on JSON-record tasks without extra metadata)."""
    slices = Slices(candidate=_slice_candidate(f))
    if slices.candidate is None or not f.cfg.governance.slices:
        return slices
    rows = [row for row in f.eval_folder.predictions(slices.candidate) if row.correct is not None]
    slices.scored_rows = len(rows)
    slices.overall = sum(bool(r.correct) for r in rows) / len(rows) if rows else 0.0
    for name in f.cfg.governance.slices:
        groups: dict[str, list[bool]] = defaultdict(list)
        for row in rows:
            value = _slice_value(row, name)
            if value is not None:
                groups[value].append(bool(row.correct))
        slices.groups[name] = sorted(((v, len(c), sum(c) / len(c)) for v, c in groups.items()), key=lambda s: s[2])
    return slices


def _slice_candidate(f: RunFacts) -> str | None:
    """The decided candidate, else the fine-tune, else the first: whichever has predictions to slice."""
    if f.eval_result is None:
        return None
    names = [c.name for c in f.eval_result.ran if f.eval_folder.predictions_path(c.name).is_file()]
    for name in (f.eval_result.decision.candidate, FINETUNED):
        if name in names:
            return name
    return next(iter(names), None)


def _slice_value(row: PredictionRow, name: str) -> str | None:
    value = row.meta.get(name)
    if value is None:
        try:
            answer = json.loads(row.reference)
        except json.JSONDecodeError:
            answer = None
        value = answer.get(name) if isinstance(answer, dict) else None
    return None if value is None else str(value)


def _bias(f: RunFacts, slices: Slices) -> Item:
    title = "Accuracy holds across slices"
    if not f.cfg.governance.slices:
        return Item("Bias", title, UNKNOWN, "governance.slices is empty: list the metadata fields to compare "
                    "(e.g. language, customer tier, product)")
    if slices.candidate is None:
        return Item("Bias", title, UNKNOWN, "not evaluated yet: run `tunekit eval`")
    if not any(slices.groups.values()):
        return Item("Bias", title, UNKNOWN, f"no test row of {slices.candidate} has a per-row score and a value for "
                    f"{', '.join(f.cfg.governance.slices)} (in meta or the JSON answer)")
    overall = slices.overall
    weak = [f"{name}={value} {acc:.0%} on {n} rows (at most {wilson_upper(acc, n):.0%})"
            for name, groups in slices.groups.items() for value, n, acc in groups
            if wilson_upper(acc, n) < overall - SLICE_GAP]
    spread = "; ".join(f"{name}: {groups[0][2]:.0%}–{groups[-1][2]:.0%} over {len(groups)} values"
                       for name, groups in slices.groups.items() if groups)
    evidence = f"{slices.candidate}, overall {overall:.0%} on {slices.scored_rows} rows; {spread}"
    if weak:
        return Item("Bias", title, FAIL, f"{evidence}; more than {SLICE_GAP:.0%} below overall: {', '.join(weak)}")
    return Item("Bias", title, PASS, f"{evidence}; no slice clearly trails overall by over {SLICE_GAP:.0%}")


def wilson_upper(accuracy: float, rows: int) -> float:
    """Upper end of the 95% Wilson score interval of a proportion (sound for small n and for 0% or 100%)."""
    centre = accuracy + Z_95**2 / (2 * rows)
    spread = Z_95 * (accuracy * (1 - accuracy) / rows + Z_95**2 / (4 * rows**2)) ** 0.5
    return (centre + spread) / (1 + Z_95**2 / rows)


# --- security ---------------------------------------------------------------------------------------------


def _security(f: RunFacts) -> list[Item]:
    guard = f.cfg.guard
    policies = f"input: {', '.join(guard.input) or 'none'}; output: {', '.join(guard.output) or 'none'}"
    return [
        _authentication(f),
        Item("Security", "No remote code", FAIL if f.cfg.model.trust_remote_code else PASS,
             f"model.trust_remote_code: {str(f.cfg.model.trust_remote_code).lower()}"),
        _safetensors_only(f.folder),
        Item("Security", "Guardrails on", PASS if guard.enabled and (guard.input or guard.output) else FAIL,
             f"guard.enabled: {str(guard.enabled).lower()}; {policies}"),
    ]


def _authentication(f: RunFacts) -> Item:
    """Whether `tunekit serve` would find keys here, in the environment or the key file; values never shown."""
    from tunekit.secrets import ApiKeys

    title, serve = "API authentication on", f.cfg.serve
    # A run's saved config: its relative paths are the project folder's, normally the current one (as for serve).
    saved = f.run.resolve() in f.config_path.resolve().parents
    try:
        keys = ApiKeys.from_config(serve, base_dir=Path.cwd() if saved else f.cfg.base_dir)
    except UserError as exc:
        return Item("Security", title, FAIL, exc.render())
    if keys.required:
        return Item("Security", title, PASS, f"bearer keys from {' and '.join(keys.sources)}")
    return Item("Security", title, FAIL, f"no serve.api_keys_file and ${serve.api_keys_env} is not set here: "
                f"anyone who reaches {serve.host}:{serve.port} can use the model")


def _safetensors_only(run: RunFolder) -> Item:
    title = "Weights in safetensors only (no pickle)"
    folders = (run.adapter_dir, run.model_dir, run.merged_dir)
    shipped = [p for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file()]
    if not shipped:
        return Item("Security", title, UNKNOWN, f"no {'/, '.join(WEIGHT_FOLDERS)}/ folder: nothing trained yet")
    pickles = [str(p.relative_to(run.root)) for p in shipped if p.suffix in PICKLE_SUFFIXES]
    tensors = [p for p in shipped if p.suffix == ".safetensors"]
    checkpoint_pickles = sum(1 for p in run.checkpoints_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    note = (f"; checkpoints/ holds {checkpoint_pickles} pickled training-state file(s) (optimizer, scheduler): "
            "resume only from trusted copies, never ship them") if checkpoint_pickles else ""
    if pickles:
        return Item("Security", title, FAIL, f"pickle files would be shipped: {', '.join(pickles[:5])}{note}")
    return Item("Security", title, PASS if tensors else UNKNOWN, f"{len(tensors)} safetensors file(s){note}")


# --- evaluation -------------------------------------------------------------------------------------------


def _evaluation(f: RunFacts) -> Item:
    title = "Evaluated against prompting and RAG: decision to ship"
    if f.eval_result is None:
        return Item("Evaluation", title, UNKNOWN, f.eval_problem or "not evaluated yet: run `tunekit eval CONFIG`")
    decision = f.eval_result.decision
    evidence = f"{decision.verdict} ({decision.candidate}): {decision.headline}"
    return Item("Evaluation", title, PASS if decision.verdict == "ship_finetune" else FAIL, evidence)


# --- rendering --------------------------------------------------------------------------------------------


def render_card(card: ModelCard, now: datetime | None = None) -> str:
    f = card.facts
    now = now or datetime.now(timezone.utc)
    required = [i for i in card.items if i.required]
    passed = sum(i.status == PASS for i in required)
    lines = [
        f"# Model card: {f.cfg.project}",
        "",
        f"Generated {now:%Y-%m-%d %H:%M} UTC by `tunekit risk` from `{f.run}` (config `{f.config_path}`).",
        "",
        f"**{'Ready' if card.passed else 'Not ready'}: {passed} of {len(required)} required checks pass.**",
        "",
        "## Risks",
        "",
    ]
    risks = [i for i in card.items if i.status != PASS]
    lines += [f"{n}. {i.status} **{i.title}**{'' if i.required else ' (advisory)'}: {_one_line(i.evidence)}"
              for n, i in enumerate(risks, 1)] or ["None found by the checks below."]
    lines += ["", "## Checklist", "", "| | section | check | required | evidence |", "|---|---|---|---|---|"]
    lines += [f"| {i.status} | {i.section} | {i.title} | {'yes' if i.required else 'no'} | {_cell(i.evidence)} |"
              for i in card.items]
    lines += ["", "✓ passes, ✗ fails, ? not measured yet (counts as not passed).", ""]
    return "\n".join(lines + _details(card)).rstrip() + "\n"


def _details(card: ModelCard) -> list[str]:
    f = card.facts
    name, licence = base_model_license(f)
    gov = f.cfg.governance
    lines = ["## Model", "", f"- Base model: `{name}` (licence: {licence})",
             f"- Method: {(f.manifest or {}).get('method', f.cfg.method.name)}; dtype "
             f"{(f.manifest or {}).get('dtype', '?')}",
             f"- Owner: {gov.owner or 'MISSING'}; on call: {gov.on_call or 'MISSING'}",
             f"- Config: `{f.config_path}` sha256 `{sha256_file(f.config_path)}`"]
    if f.summary:
        lines.append(f"- Trained: {f.summary.get('steps')} steps, finished {f.summary.get('finished_at', '?')}, "
                     f"validation loss {f.summary.get('final_val_loss')}")
    if f.manifest:
        lines.append(f"- Chat template sha256 `{f.manifest.get('chat_template_sha256', '?')}`")
    lines += ["", "## Data", ""]
    if f.splits:
        lines += [f"- Input `{i['path']}` sha256 `{i['sha256']}`" for i in f.splits.get("inputs", [])]
        lines += [f"- Split {n}: {s['rows']} rows, sha256 `{s['sha256']}`" for n, s in f.splits["splits"].items()]
        prepared = datetime.fromtimestamp(f.folder.splits_manifest_path.stat().st_mtime, timezone.utc)
        lines.append(f"- Prepared {prepared:%Y-%m-%d %H:%M} UTC, split seed {f.splits.get('seed')}")
    else:
        lines.append("Not prepared yet.")
    lines += ["", "## Evaluation", ""]
    if f.eval_result:
        decision = f.eval_result.decision
        lines += [f"- {decision.headline}", f"- Verdict `{decision.verdict}`, candidate `{decision.candidate}`, "
                  f"evaluated {f.eval_result.created}"]
    else:
        lines.append(f.eval_problem or "Not evaluated yet.")
    for field_name, groups in card.slices.groups.items():
        lines += ["", f"### Accuracy of `{card.slices.candidate}` by {field_name}", "", "| value | rows | accuracy |",
                  "|---|---|---|"]
        lines += [f"| {_cell(v)} | {n} | {acc:.1%} |" for v, n, acc in groups] or ["| (no scored rows) | 0 | - |"]
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")
