"""How `tunekit data check` scales: 10k and 100k chat rows with duplicates, near-duplicates and PII.

Prints one JSON line: wall time and rows/s at each size, and how time grows from 10k to 100k
relative to linear (1.0 = perfectly linear). Target on the 2-core machine: 100k rows under 60 s,
growth no worse than 1.3x linear. Run: `.venv/bin/python bench/data_scaling.py`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = ["invoice", "password", "delivery", "refund", "upgrade", "login", "export", "sync", "billing", "api"]
VERBS = ["cannot", "want to", "need help to", "keep failing to", "would like to", "tried to"]
ACTIONS = ["reset", "download", "change", "cancel", "update", "find", "share", "delete", "restore", "verify"]
FILLER = (  # noqa: SIM905
    "it worked yesterday but today the page shows an error and nothing happens when I click the button "
    "again and again while my team waits for the report that is due this afternoon"
).split()


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if rows and roll < 0.03:  # exact duplicate
            rows.append(json.loads(json.dumps(rng.choice(rows))))
            continue
        if rows and roll < 0.06:  # near duplicate: one word changed
            base = json.loads(json.dumps(rng.choice(rows)))
            words = base["messages"][0]["content"].split()
            words[rng.randrange(len(words))] = rng.choice(FILLER)
            base["messages"][0]["content"] = " ".join(words)
            rows.append(base)
            continue
        topic = rng.choice(TOPICS)
        filler = " ".join(rng.choice(FILLER) for _ in range(rng.randint(8, 40)))
        user = f"Ticket {i}: I {rng.choice(VERBS)} {rng.choice(ACTIONS)} my {topic}; {filler}."
        if roll > 0.98:
            user += f" Reach me at user{i}@example.com or +1-555-01{i % 100:02d}."
        answer = f"Category: {topic}. Steps: {' '.join(rng.choice(FILLER) for _ in range(rng.randint(5, 20)))}."
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return rows


def time_check(path: Path) -> tuple[float, dict]:
    exe = Path(sys.executable).with_name("tunekit")
    start = time.perf_counter()
    proc = subprocess.run(
        [str(exe), "data", "check", str(path), "--no-tokens", "--json"], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"data check failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def time_startup() -> tuple[float, None]:
    exe = Path(sys.executable).with_name("tunekit")
    start = time.perf_counter()
    subprocess.run([str(exe), "data", "check", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    result: dict = {"bench": "data_scaling", "target_100k_s": 60, "target_growth": 1.3}
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"rows_{n}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(n, seed=n)), encoding="utf-8")
            wall, report = time_check(path)
            walls[n] = wall
            result[f"rows_{n}"] = {
                "wall_s": round(wall, 2),
                "rows_per_s": round(n / wall),
                "exact_dupes": report["duplicates"]["exact"],
                "near_dupes": report["duplicates"]["near"],
                "pii_rows": sum(v["count"] for v in report["pii"].values()),
            }
    # Process start-up (imports) is paid once per call; growth is measured on the work after it,
    # so a slow start cannot flatter the scaling figure.
    startup, _ = time_startup()
    result["startup_s"] = round(startup, 2)
    small, large = min(walls), max(walls)
    if small != large:
        work = {n: max(w - startup, 1e-3) for n, w in walls.items()}
        result["growth_vs_linear"] = round((work[large] / work[small]) / (large / small), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
