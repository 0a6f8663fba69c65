"""The project's pinned test set: the rows every round is scored on, kept byte for byte by later `tunekit
data prepare` runs until `tunekit data prepare --new-test` replaces it.

Without a pin, adding the rows monitoring exported re-splits everything, and round 2 is scored on other
rows than round 1: the comparison the loop exists for cannot be made. The pin lives beside the config
(`ProjectFolder`), not in a run folder, since every round's run is new. Rows are compared by content (their
messages and label), not by bytes, so a moved project (whose rows record other source paths) still matches.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit.data.records import Example, read_split
from tunekit.errors import UserError
from tunekit.io import atomic_path, write_json_atomic
from tunekit.runfolder import ProjectFolder


@dataclass
class PinnedTest:
    data: bytes  # test.jsonl as pinned
    record: dict[str, Any]  # test.json
    path: Path

    @property
    def sha256(self) -> str:
        return self.record["sha256"]

    def examples(self) -> list[Example]:
        return read_split(self.path)


@dataclass
class Change:
    removed: int
    added: int

    def __str__(self) -> str:
        return f"{self.removed} row(s) removed, {self.added} added"


def read_pin(folder: ProjectFolder) -> PinnedTest | None:
    if not folder.pinned_record_path.is_file() or not folder.pinned_test_path.is_file():
        return None
    record = json.loads(folder.pinned_record_path.read_text(encoding="utf-8"))
    data = folder.pinned_test_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise UserError("the pinned test set does not match its recorded SHA-256: it was edited or half-written",
                        where=str(folder.pinned_test_path),
                        fix="restore it from version control, or `tunekit data prepare --new-test` to pin a new one")
    return PinnedTest(data, record, folder.pinned_test_path)


def describe(record: dict[str, Any], folder: ProjectFolder, kept: bool) -> str:
    """One line for the console: which test set this prepare used, and what a new one replaced."""
    line = (f"test set {'kept as pinned' if kept else 'pinned'}: {folder.pinned_test_path} "
            f"({record['rows']} rows, sha256 {record['sha256'][:12]}...)")
    if not kept and (replaced := record.get("replaced")):
        line += (f"; replaces sha256 {replaced['sha256'][:12]}... ({replaced['removed']} row(s) removed, "
                 f"{replaced['added']} added): earlier eval reports are not comparable")
    return line


def content_change(old: bytes, new: bytes) -> Change:
    """How many rows of `old` are not in `new` and the reverse, by content (multiset of rows)."""
    before, after = Counter(_contents(old)), Counter(_contents(new))
    return Change(removed=sum((before - after).values()), added=sum((after - before).values()))


def write_pin(folder: ProjectFolder, data: bytes, previous: PinnedTest | None) -> dict[str, Any]:
    """Pin `data` (a test.jsonl) as the project's test set; the record says what it replaced, if anything."""
    record: dict[str, Any] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": len(_contents(data)),
        "pinned_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if previous is not None:
        change = content_change(previous.data, data)
        record["replaced"] = {"sha256": previous.sha256, "removed": change.removed, "added": change.added}
    folder.root.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder.pinned_test_path) as tmp:
        tmp.write_bytes(data)
    write_json_atomic(folder.pinned_record_path, record)  # last: a record always describes the file beside it
    return record


def _contents(data: bytes) -> list[str]:
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    return [json.dumps([r.get("messages"), r.get("label")], sort_keys=True, ensure_ascii=False) for r in rows]
