"""The end of `make demo`: serve the demo run, ask one grounded question with the official openai client, stop.

The server runs in this process on a free loopback port (`serve_in_thread`), with grounding switched on
over the demo's help pages; the answer, its cited sources and the request-log row are printed.

  .venv/bin/python scripts/serve_demo.py [RUN] [--config examples/support_tickets/tunekit.yaml]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "support_tickets"
QUESTION = ("Ticket: I was charged twice for my Ledgerly subscription this month and need the duplicate "
            "refunded. How long does a refund take?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=str(ROOT / "runs" / "demo"), help="the run folder to serve")
    parser.add_argument("--config", default=str(DEMO / "tunekit.yaml"), help="project YAML (rag and guard)")
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args()

    import openai

    from tunekit.errors import UserError
    from tunekit.serve.server import serve_in_thread
    from tunekit.serve.state import build_state

    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    try:
        state = build_state(args.run, config=args.config, overrides=["serve.grounding=true"], say=say)
    except UserError as exc:
        raise SystemExit(f"error: {exc.render()}") from None
    try:
        with serve_in_thread(state) as server:
            say(f"serving {', '.join(state.served.names)} at {server.base_url}")
            client = openai.OpenAI(base_url=server.base_url, api_key="unused-on-loopback")
            model = client.models.list().data[0].id
            reply = client.chat.completions.create(
                model=model, max_tokens=64,
                messages=[*_system(state), {"role": "user", "content": args.question}])
        state.flush()
    finally:
        state.close()
    extra = reply.model_extra or {}
    info = extra.get("x_tunekit", {})
    print(json.dumps({"model": model, "question": args.question, "answer": reply.choices[0].message.content,
                      "finish_reason": reply.choices[0].finish_reason, "grounded": info.get("grounded"),
                      "sources_given": [f"[{s['source']}] {s['path']}:{s['line_start']}-{s['line_end']}"
                                        for s in info.get("sources", [])],
                      "citations": extra.get("citations", []), "citation_check": info.get("citation_check"),
                      "usage": reply.usage.model_dump(), "request_log": str(state.request_log.path)}, indent=2))


def _system(state) -> list[dict[str, str]]:
    """The run's own system prompt, as the model saw it in training."""
    prompt = state.cfg.data.system_prompt
    return [{"role": "system", "content": prompt}] if prompt else []


if __name__ == "__main__":
    main()
