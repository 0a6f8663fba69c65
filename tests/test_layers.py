"""The package's layers: every module imports only from its own layer or the ones below it.

Read from the source with `ast`, lazy imports inside functions included (a lazy import is still a
dependency; it only hides the cycle until run time). There is no exceptions list: an import that goes
the wrong way is fixed by moving the shared piece one floor down.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tunekit

SOURCE = Path(tunekit.__file__).parent

# Lowest first. A top-level package or module of `tunekit` belongs to exactly one layer.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "quiet", "console"),  # the leaves: error types, logging noise, consoles
    ("io", "devices", "processes"),  # atomic writes, hashes; devices and dtypes; child processes to stop
    ("gates",),  # success criteria as text: `metric op threshold`
    ("config_stages",),  # the config's later-stage sections
    ("config", "secrets"),  # the one typed config; API keys, which never go in it
    ("results", "runfolder"),  # typed stage results; the run folder's paths and readers
    ("data",),  # examples, their formats, splits and what an answer says
    ("models", "methods"),  # loading models; fine-tuning methods
    ("generate",),  # the batched generation engine
    ("rag", "guard"),  # retrieval; guardrails
    ("train", "eval", "export"),  # training; judging; GGUF export
    ("report", "monitor"),  # reports and model cards; drift and failure monitoring
    ("serve",),  # the OpenAI-compatible server
    ("cli",),  # one module per command
]
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def top_level(module: str) -> str:
    """`tunekit.eval.runner` -> `eval`; `tunekit` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every tunekit import in the file, relative ones resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, target) for line, target in found if target == "tunekit" or target.startswith("tunekit.")]


def all_edges() -> list[tuple[str, int, str, str]]:
    """(file, line, from top-level, to top-level) for every import between top-level parts."""
    edges = []
    for path in sorted(SOURCE.rglob("*.py")):
        source = top_level(module_name(path))
        for line, target in imported_modules(path):
            if top_level(target) != source:
                edges.append((str(path.relative_to(SOURCE)), line, source, top_level(target)))
    return edges


def test_every_part_of_the_package_has_a_layer():
    parts = {top_level(module_name(p)) for p in SOURCE.rglob("*.py")}
    assert not parts - LAYER_OF.keys(), "declare these in LAYERS"


def test_no_import_goes_up_a_layer():
    upward = [f"{file}:{line}: {source} imports {target}" for file, line, source, target in all_edges()
              if LAYER_OF[target] > LAYER_OF[source]]
    assert not upward, "\n".join(upward)


def test_parts_of_one_layer_do_not_import_each_other_in_a_cycle():
    graph: dict[str, set[str]] = {}
    for _, _, source, target in all_edges():
        graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in graph.get(start, ()))

    cycles = sorted(f"{a} <-> {b}" for a, targets in graph.items() for b in targets if reaches(b, a, {b}))
    assert not cycles, cycles


def test_the_checker_sees_lazy_imports():
    # The rule is only as good as its reading of the source: a function-level import counts too.
    targets = {t for _, t in imported_modules(SOURCE / "eval" / "runner.py")}
    assert "tunekit.generate" in targets  # imported inside a function
    assert top_level("tunekit") == "__init__"
