"""`tunekit chat RUN`: a quick interactive try, with the chat template the run was trained with."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tunekit.console import console


def chat(
    run: Path = typer.Argument(..., help="a finished training run folder"),
    system: str | None = typer.Option(None, "--system", help="system prompt (default: the run's data one)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy"),
) -> None:
    """Talk to a fine-tuned run. Empty line or Ctrl-D ends."""
    from tunekit.generate import GenerationParams, Generator
    from tunekit.models.runs import load_run

    loaded = load_run(run)
    generator = Generator(loaded.model, loaded.tokenizer)  # the run's tokenizer: its chat template
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature)
    system = system if system is not None else loaded.cfg.data.system_prompt
    history = [{"role": "system", "content": system}] if system else []
    console.print(f"chatting with {run} ({loaded.kind}); empty line to quit", style="dim")
    while True:
        try:
            user = input("you> ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        except EOFError:
            break
        if not user.strip():
            break
        history.append({"role": "user", "content": user})
        print("model> ", end="", flush=True)
        reply = ""
        for piece in generator.stream(history, params):
            reply += piece
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": reply})
