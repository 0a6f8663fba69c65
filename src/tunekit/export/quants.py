"""The GGUF types tunekit writes: the ones whose quantizer the `gguf` package (ggml's own Python code) has.

K-quants (q4_k_m, q5_k_m, q6_k, ...) and i-quants are not among them: `gguf` can read them but only
llama.cpp's C++ `llama-quantize` can make them, so tunekit names that command instead of guessing at a
re-implementation it could not prove.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunekit.errors import UserError


@dataclass(frozen=True)
class Quant:
    name: str
    layers: str  # GGMLQuantizationType name for the 2-D weights of the decoder layers
    embeddings: str  # ... for token_embd and output: kept at 8 bits under a 4/5-bit type, as llama.cpp does
    file_type: str  # LlamaFileType name, written as general.file_type
    min_agreement: float  # declared tolerance: the share of prompts whose greedy answer must be identical
    about: str


QUANTS = {q.name: q for q in (
    Quant("f32", "F32", "F32", "ALL_F32", 1.0, "32-bit floats: the merged weights exactly"),
    Quant("f16", "F16", "F16", "MOSTLY_F16", 1.0, "16-bit floats"),
    Quant("bf16", "BF16", "BF16", "MOSTLY_BF16", 0.9, "bfloat16: float32's range, 8 bits of mantissa"),
    Quant("q8_0", "Q8_0", "Q8_0", "MOSTLY_Q8_0", 1.0, "8-bit blocks of 32 with one scale"),
    Quant("q5_1", "Q5_1", "Q8_0", "MOSTLY_Q5_1", 0.5, "5-bit blocks with scale and minimum"),
    Quant("q5_0", "Q5_0", "Q8_0", "MOSTLY_Q5_0", 0.5, "5-bit blocks with one scale"),
    Quant("q4_1", "Q4_1", "Q8_0", "MOSTLY_Q4_1", 0.25, "4-bit blocks with scale and minimum"),
    Quant("q4_0", "Q4_0", "Q8_0", "MOSTLY_Q4_0", 0.25, "4-bit blocks with one scale"),
)}
QUANT_NAMES = tuple(QUANTS)
# What llama.cpp's llama-quantize calls them, for the message that sends people there.
LLAMA_QUANTIZE_ONLY = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
                       "iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s",
                       "iq3_m", "iq4_nl", "iq4_xs")


def get_quant(name: str) -> Quant:
    key = name.strip().lower()
    if key in QUANTS:
        return QUANTS[key]
    if key in LLAMA_QUANTIZE_ONLY:
        raise UserError(
            f"{key} is made by llama.cpp's C++ quantizer; the gguf Python package that tunekit writes with can "
            f"only read it", where="--quant",
            fix=f"export --quant f16, then run `llama-quantize MODEL-f16.gguf MODEL-{key}.gguf {key.upper()}` "
                f"(its answers are then not checked by tunekit); or pick one of {', '.join(QUANT_NAMES)}")
    raise UserError(f"unknown GGUF type '{name}'", where="--quant", fix=f"use one of {', '.join(QUANT_NAMES)}")

