"""`tunekit export RUN --format gguf --quant TYPE`: the fine-tune as a file llama.cpp, Ollama and LM Studio run,
proven to answer like the fine-tune before it is called done."""

from __future__ import annotations

from pathlib import Path

import typer

from tunekit.console import console, err_console
from tunekit.export.quants import QUANTS

FORMATS = ("gguf",)
QUANT_HELP = (f"GGUF type: {', '.join(QUANTS)} (the types the gguf package can write; K-quants such as q4_k_m "
              "come from llama.cpp's llama-quantize run on the f16 export)")
TOLERANCE_HELP = ("share of identical greedy answers the export must reach (default per type: "
                  + ", ".join(f"{q.name} {q.min_agreement:g}" for q in QUANTS.values()) + ")")


def export(
    run: Path = typer.Argument(..., help="a finished training run folder"),
    fmt: str = typer.Option("gguf", "--format", help="export format: gguf"),
    quant: str = typer.Option("q8_0", "--quant", help=QUANT_HELP),
    out: Path | None = typer.Option(None, "--out", help="output folder (default RUN/export/gguf-TYPE)"),
    prompts: int = typer.Option(16, "--prompts", min=1, help="validation prompts the proof answers"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1,
                                              help="per answer in the proof (default: eval.max_new_tokens)"),
    min_agreement: float | None = typer.Option(None, "--min-agreement", help=TOLERANCE_HELP),
) -> None:
    """Write the merged model as GGUF (tokenizer, chat template and special tokens included), a LoRA adapter GGUF
    for llama.cpp's --lora when the run is a LoRA, and an Ollama Modelfile; then load the file back and check its
    greedy answers on the run's validation prompts against the merged model's. Exit 1 when they agree less than
    the declared tolerance."""
    from tunekit.errors import UserError
    from tunekit.export.runner import export_gguf

    if fmt.lower() not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'", where="--format", fix=f"use one of {', '.join(FORMATS)}")
    result = export_gguf(run, quant, out=out, prompts=prompts, max_new_tokens=max_new_tokens,
                         min_agreement=min_agreement, say=lambda text: err_console.print(text, style="dim"))
    proof = result.report["proof"]
    summary = (f"{proof['identical']}/{proof['prompts']} greedy answers identical to the merged model's "
               f"({proof['agreement']:.0%}; tolerance {proof['min_agreement']:.0%})")
    console.print(f"wrote {result.gguf} ({result.report['size_mb']} MB)", highlight=False)
    adapter = result.report["adapter"]
    if adapter["written"]:
        console.print(f"wrote {result.out_dir / adapter['file']} (LoRA adapter for llama.cpp --lora)", highlight=False)
    console.print(f"wrote {result.out_dir / 'Modelfile'} and export_report.md", highlight=False)
    if not result.passed:
        console.print(f"[red]the export answers differently: {summary}; see {result.out_dir / 'export_report.md'}[/]",
                      highlight=False)
        raise typer.Exit(1)
    console.print(summary, highlight=False)
