"""`tunekit merge RUN`: a merged full model, checked against base+adapter before it is called done."""

from __future__ import annotations

from pathlib import Path

import typer

from tunekit.console import console


def merge(run: Path = typer.Argument(..., help="a finished training run folder")) -> None:
    """Merge the run's adapter into its base model and verify the greedy outputs match."""
    from tunekit.train.merge import merge_run

    result = merge_run(run)
    if result.mismatches:
        console.print(f"[red]merged model differs from base+adapter on {len(result.mismatches)} of "
                      f"{result.checked} validation prompts[/]")
        for item in result.mismatches:
            console.print(f"  expected {item['expected']!r}\n  got      {item['got']!r}", highlight=False)
        raise typer.Exit(1)
    console.print(f"wrote {result.path}; greedy outputs match base+adapter on {result.checked}/{result.checked} "
                  "validation prompts")
