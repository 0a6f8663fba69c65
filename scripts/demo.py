"""`make demo` after the install: each stage as the README shows it, then how long each one took.

    .venv/bin/python scripts/demo.py [--started EPOCH_SECONDS]

Runs data check, data prepare, train, index, eval and the serving demo on examples/support_tickets into
runs/demo, printing every command before it runs. `--started` (the Makefile passes when `make demo` began)
adds the install and model conversion before the first stage to the table. Stops at the first stage that
fails, with its exit code; `data check` may exit 1 (warnings: the demo data has duplicates and fake PII on
purpose) and `eval` may exit 1 (a verdict: nothing met the gates).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = "examples/support_tickets"
CONFIG = f"{DEMO}/tunekit.yaml"
RUN = "runs/demo"
# (stage, command, exit codes that still mean success)
STAGES = [
    ("data check", ["tunekit", "data", "check", f"{DEMO}/tickets.jsonl", "--config", CONFIG], (0, 1)),
    ("data prepare", ["tunekit", "data", "prepare", CONFIG, f"run_dir={RUN}"], (0,)),
    ("train", ["tunekit", "train", CONFIG, f"run_dir={RUN}"], (0,)),
    ("index", ["tunekit", "index", "--config", CONFIG], (0,)),
    ("eval", ["tunekit", "eval", CONFIG, f"run_dir={RUN}"], (0, 1)),
    ("serve", ["python", "scripts/serve_demo.py", RUN, "--config", CONFIG], (0,)),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--started", type=float, help="when `make demo` began (epoch seconds): times the install")
    args = parser.parse_args()
    times: list[tuple[str, float]] = []
    if args.started:
        times.append(("install (make setup)", time.time() - args.started))
    for name, command, ok in STAGES:
        argv = [str(BIN / command[0]), *command[1:]]
        print(f"\n$ {' '.join([command[0], *command[1:]])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(argv, cwd=ROOT)
        times.append((name, time.perf_counter() - start))
        if code not in ok:
            print_times(times)
            print(f"demo stopped: `{name}` exited {code}", file=sys.stderr)
            return code
    print_times(times)
    print(f"Demo run folder: {RUN} (data report: {RUN}/data/data_report.md, eval report: {RUN}/eval/report.md)")
    return 0


def print_times(times: list[tuple[str, float]]) -> None:
    width = max(len(name) for name, _ in times)
    print("\nstage times")
    for name, seconds in times:
        print(f"  {name:<{width}}  {seconds:7.1f} s")
    print(f"  {'total':<{width}}  {sum(s for _, s in times):7.1f} s")


if __name__ == "__main__":
    sys.exit(main())
