"""The data report: data_report.json (everything), data_report.md (for people) and a length histogram."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunekit.data.split import SPLITS
from tunekit.runfolder import DataFolder


def write_data_report(folder: DataFolder, summary: dict[str, Any], lengths: dict[str, list[int]],
                      max_len: int) -> None:
    folder.report_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_lengths(folder.lengths_plot, lengths, max_len)
    # The markdown sits next to the plot, so a bare file name links it.
    folder.report_md.write_text(render_markdown(summary, folder.lengths_plot.name), encoding="utf-8")


def plot_lengths(path: Path, lengths: dict[str, list[int]], max_len: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    series = [(name, lengths[name]) for name in SPLITS if lengths.get(name)]
    ax.hist([v for _, v in series], bins=40, stacked=True, label=[n for n, _ in series])
    ax.axvline(max_len, color="crimson", linestyle="--", label=f"max_seq_len {max_len}")
    ax.set_xlabel("tokens per example (chat template applied)")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render_markdown(s: dict[str, Any], lengths_plot: str) -> str:
    lines = ["# Data report", "", "## Inputs", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{i['path']}` | `{i['sha256']}` |" for i in s["inputs"]]
    dropped = ", ".join(f"{k}: {v}" for k, v in s["dropped"].items() if v) or "none"
    lines += [
        "",
        f"Rows read: **{s['rows_read']}**; kept **{s['kept']}**; dropped: {dropped}.",
        f"Split seed: {s['seed']}. Test examples sharing a prompt (exact or near) with train: "
        f"{s['leakage']['test_vs_train']}.",
        "",
        "## Splits",
        "",
        "| split | rows | tokens min | p50 | mean | p95 | max | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SPLITS:
        t = s["token_lengths"].get(name, {})
        info = s["splits"][name]
        cells = [t.get(k, "-") for k in ("min", "p50", "mean", "p95", "max")]
        lines.append(f"| {name} | {info['rows']} | " + " | ".join(map(str, cells)) + f" | `{info['sha256'][:16]}…` |")
    pii = s["pii"]
    found = ", ".join(f"{k}: {v}" for k, v in pii["found"].items()) or "none"
    lines += [
        "",
        f"![token lengths]({lengths_plot})",
        "",
        "## PII",
        "",
        f"Found (examples): {found}. Action: **{pii['action']}** ({pii['redacted_examples']} examples redacted).",
    ]
    lines += _label_section(s["labels"])
    return "\n".join(lines) + "\n"


def _label_section(labels: dict[str, dict[str, Any]]) -> list[str]:
    train = labels.get("train", {})
    if train.get("kind") == "labels":
        groups = {"label": {n: labels[n].get("labels", {}) for n in SPLITS}}
    elif train.get("kind") == "json_fields":
        groups = {f: {n: labels[n].get("fields", {}).get(f, {}) for n in SPLITS} for f in train["fields"]}
    else:
        return []
    out = ["", "## Label balance", ""]
    for field, per_split in groups.items():
        values = list(per_split["train"].get("counts", {}))
        out += [f"### {field}", "", "| value | train | validation | test |", "|---|---|---|---|"]
        for value in values[:100]:
            counts = [per_split[n].get("counts", {}).get(value, 0) for n in SPLITS]
            out.append(f"| `{value}` | " + " | ".join(map(str, counts)) + " |")
        out.append("")
    return out
