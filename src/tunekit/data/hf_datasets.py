"""Local Hugging Face datasets: folders written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.

Read offline with `datasets.load_from_disk`; a row's number (1-based) stands in for its line. A DatasetDict
given alone as data.files brings its own splits (train, validation/dev, test), as data.splits would. A Hub
id (`owner/name`) cannot be downloaded here: it fails at once, saying how to bring the data in.
"""

from __future__ import annotations

from pathlib import Path

from tunekit.errors import UserError

DICT_MARKER = "dataset_dict.json"
DATASET_MARKERS = ("state.json", "dataset_info.json")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and all((path / marker).is_file() for marker in DATASET_MARKERS)


def is_dataset_dict(path: Path) -> bool:
    return path.is_dir() and (path / DICT_MARKER).is_file()


def dict_splits(paths: list[Path]) -> dict[str, list[Path]]:
    """A lone DatasetDict folder's splits as data.splits would give them ({} for anything else)."""
    if len(paths) != 1 or not is_dataset_dict(paths[0]):
        return {}
    folder = paths[0]
    present = {p.name for p in folder.iterdir() if is_dataset_folder(p)}
    splits = {name: [folder / alias for alias in aliases if alias in present][:1]
              for name, aliases in SPLIT_NAMES.items()}
    missing = [name for name in ("train", "test") if not splits[name]]
    if missing:
        raise UserError(f"the DatasetDict has no {' or '.join(missing)} split (it has: {', '.join(sorted(present))})",
                        where=str(folder), fix="name its splits in data.splits: {train: [FOLDER/...], test: [...]}")
    return splits


def read_dataset_rows(path: Path) -> list[dict]:
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for a folder it cannot read
        raise UserError(f"cannot read the saved dataset: {exc}", where=str(path),
                        fix="give a folder written by Dataset.save_to_disk") from None
    if not hasattr(dataset, "to_list"):
        raise UserError("is a DatasetDict: give it alone as data.files, or its split folders in data.splits",
                        where=str(path))
    return dataset.to_list()


def refuse_hub_id(path: Path, given: str) -> None:
    """A missing path that reads like a Hub dataset id: say that nothing is downloaded, and what to do."""
    owner, _, name = given.partition("/")
    if owner and name and "/" not in name and not Path(given).suffix and not given.startswith((".", "~")):
        raise UserError(f"'{given}' looks like a Hugging Face Hub dataset id; tunekit works offline and downloads "
                        "nothing", where=str(path),
                        fix=f"on a connected machine: datasets.load_dataset('{given}').save_to_disk('FOLDER'), then "
                            "copy FOLDER here and give it in data.files")
