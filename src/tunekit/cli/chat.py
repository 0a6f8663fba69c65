"""`tunekit chat RUN`: a quick interactive try, with the chat template the run was trained with."""

from __future__ import annotations

import sys
from pathlib import Path
from threading import Thread

import typer

from tunekit.cli.console import console


def chat(
    run: Path = typer.Argument(..., help="a finished training run folder"),
    system: str | None = typer.Option(None, "--system", help="system prompt (default: the run's data one)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy"),
) -> None:
    """Talk to a fine-tuned run. Empty line or Ctrl-D ends."""
    import torch
    from transformers import TextIteratorStreamer

    from tunekit.models.runs import load_run

    loaded = load_run(run)
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
        text = loaded.tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        inputs = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, do_sample=temperature > 0,
                      pad_token_id=loaded.tokenizer.pad_token_id)
        if temperature > 0:
            kwargs["temperature"] = temperature
        with torch.no_grad():
            worker = Thread(target=loaded.model.generate, kwargs=kwargs)
            worker.start()
            reply = ""
            print("model> ", end="", flush=True)
            for piece in streamer:
                reply += piece
                print(piece, end="", flush=True)
            worker.join()
        print()
        history.append({"role": "assistant", "content": reply})
