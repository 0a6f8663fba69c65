"""A transformers Llama-family model as one GGUF file, written with the `gguf` package (ggml's own writer).

What llama.cpp needs beyond the weights: its tensor names (gguf's TensorNameMap), its hyperparameter keys,
and the q/k projection rows in the order its rotary embedding expects. Hugging Face checkpoints rotate
the two halves of each head's dimensions; llama.cpp rotates interleaved pairs, so every head's rows of
q_proj and k_proj are permuted here (transformers' GGUF reader permutes them back).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunekit.errors import UserError
from tunekit.export.quants import Quant
from tunekit.export.vocab import Vocab, add_vocab

ARCHITECTURES = {"LlamaForCausalLM": "LLAMA"}  # transformers class -> gguf.MODEL_ARCH member
ROPE_TYPES = ("default", None)
QK_ROWS = ("self_attn.q_proj", "self_attn.k_proj")


@dataclass
class WrittenModel:
    path: Path
    tensor_types: dict[str, int]  # GGML type name -> tensors of that type
    fallbacks: list[str]  # tensors kept at F16 because their rows do not split into the type's blocks


def check_exportable(config: Any) -> None:
    """A UserError before any work when the model is not one this writer handles."""
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    if arch not in ARCHITECTURES:
        raise UserError(f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {arch}",
                        fix="convert the merged model (`tunekit merge`) with llama.cpp's convert_hf_to_gguf.py")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) not in ROPE_TYPES:
        raise UserError(f"rope scaling '{rope.get('rope_type', rope.get('type'))}' is not written by tunekit's "
                        "GGUF export yet", fix="convert the merged model with llama.cpp's convert_hf_to_gguf.py")


def write_model(path: Path, model: Any, vocab: Vocab, quant: Quant, general: dict[str, str],
                sampling: dict[str, float]) -> WrittenModel:
    """Write `model` (fp32 weights, adapter already folded in) with `vocab` to `path`."""
    import gguf

    config = model.config
    check_exportable(config)
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[config.architectures[0]])
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    _add_general(writer, general, quant)
    _add_hparams(writer, config)
    _add_sampling(writer, sampling)
    add_vocab(writer, vocab)
    types: Counter[str] = Counter()
    fallbacks: list[str] = []
    for name, data in gguf_tensors(model, arch):
        encoded, qtype = encode(name, data, quant)
        if qtype.name != tensor_type(name, data, quant):
            fallbacks.append(name)
        writer.add_tensor(name, encoded, raw_dtype=qtype)
        types[qtype.name] += 1
    finish_file(writer, Path(path))
    return WrittenModel(Path(path), dict(types), fallbacks)


def finish_file(writer: Any, path: Path) -> None:
    """Header, metadata, then tensors: the order GGUF lays them out in."""
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_tensors(model: Any, arch: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array in llama.cpp's layout) for every weight the file needs."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if (tied and hf_name == "lm_head.weight") or hf_name.endswith("rotary_emb.inv_freq"):
            continue  # a tied output layer is token_embd; llama.cpp computes the rotary frequencies itself
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"no GGUF name for the tensor {hf_name}", fix="this model has layers llama.cpp's "
                            "Llama graph lacks; convert it with llama.cpp's convert_hf_to_gguf.py")
        yield name, qk_to_gguf(hf_name, tensor.detach().float().cpu().numpy(), config)


def qk_to_gguf(hf_name: str, data: np.ndarray, config: Any) -> np.ndarray:
    """q/k projection rows from the Hugging Face rotary layout to llama.cpp's; other tensors unchanged."""
    if ".self_attn.q_proj." in hf_name:
        return permute_rotary(data, config.num_attention_heads)
    if ".self_attn.k_proj." in hf_name:
        return permute_rotary(data, config.num_key_value_heads)
    return data


def permute_rotary(rows: np.ndarray, heads: int) -> np.ndarray:
    # Per head: rows [x0..x(d/2-1), y0..y(d/2-1)] become [x0, y0, x1, y1, ...].
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_rotary(rows: np.ndarray, heads: int) -> np.ndarray:
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def tensor_type(name: str, data: np.ndarray, quant: Quant) -> str:
    """The GGML type `quant` stores this tensor in: norms and other vectors always F32, as llama.cpp needs."""
    if data.ndim <= 1 or name.endswith("_norm.weight"):
        return "F32"
    return quant.embeddings if name.startswith(("token_embd.", "output.")) else quant.layers


def encode(name: str, data: np.ndarray, quant: Quant) -> tuple[np.ndarray, Any]:
    import gguf

    T = gguf.GGMLQuantizationType
    qtype = getattr(T, tensor_type(name, data, quant))
    if qtype == T.F32:
        return data.astype(np.float32), qtype
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:  # rows not a multiple of the block size (32): llama.cpp's converter falls back too
        return gguf.quants.quantize(data, T.F16), T.F16


def _add_general(writer: Any, general: dict[str, str], quant: Quant) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    add_general_strings(writer, general)
    writer.add_file_type(getattr(gguf.LlamaFileType, quant.file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_general_strings(writer: Any, general: dict[str, str]) -> None:
    for key, value in general.items():
        if value:
            writer.add_string(f"general.{key}", value)


def _add_sampling(writer: Any, sampling: dict[str, float]) -> None:
    """llama.cpp's default sampling for this model (general.sampling.*), used unless its user sets others."""
    for key, value in sampling.items():
        if key == "top_k":
            writer.add_int32("general.sampling.top_k", int(value))
        else:
            writer.add_float32(f"general.sampling.{key}", float(value))


def _add_hparams(writer: Any, config: Any) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:  # llama.cpp assumes hidden/heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def rope_theta(config: Any) -> float:
    """transformers 5 keeps it in `rope_parameters`; 4 had `rope_theta`."""
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
