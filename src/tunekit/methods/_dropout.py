"""LoRA's input dropout with a cheaper random mask on CPU.

Written by hand because torch's CPU dropout draws one random number per element through a serial
generator path: ~2.5 ms for a 4 x 200 x 576 activation here, while multiplying it by the mask takes
0.02 ms. LoRA applies dropout to the input of every adapted layer, and gradient checkpointing applies it
again in recompute, so it was 15% of a LoRA step in the benchmark (502 against 590 tokens/s without).

Each mask costs one draw from torch's global generator, a 64-bit seed; the mask itself is a counter hash
of it (SplitMix64, a generator that passes BigCrush), 16 bits per element. So checkpoint recompute and
resumed runs see the same masks, as with torch's dropout, and:
- eagerly, four elements per hash, computed on whole tensors: 0.32 ms for a 4 x 200 x 576 mask, against
  0.45 ms for 16-bit slices of torch's own 64-bit draws and 2.5 ms for torch's dropout;
- under torch.compile, the same bits per element, fused into the multiply that applies the mask: mask and
  multiply take 0.12 ms, and no mask is ever written to memory. (Inductor's own random numbers ran
  per element at 2.6 ms a mask, and an opaque mask op still cost ~6% of a compiled LoRA step.)
It keeps what dropout means: each element is zeroed independently with probability p (rounded to a
multiple of 2^-16, and the survivors scaled by the exact inverse of the rounded keep rate, so the
expectation is unchanged). Elsewhere (GPU) torch's own dropout is already fast and is used.
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = 1 << 16  # one 16-bit draw per element


class FastDropout(nn.Module):
    """`stream` tells apart the dropouts of one layer that see the same input (q, k and v; gate and up):
    under torch.compile, identical calls of the mask op would be merged into one shared mask."""

    def __init__(self, p: float, stream: int = 0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.stream = stream
        self.dropped_levels = round(p * LEVELS)
        self.scale = LEVELS / (LEVELS - self.dropped_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped_levels == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        keep = keep_mask(x, dropout_seed(x, self.stream), self.dropped_levels)
        return x * keep * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


# An opaque op for torch.compile, so that the draw stays a draw from torch's generator (checkpointed
# recompute replays it with the same state, as in eager mode: tests/test_compile.py). `like` ties it to
# its input and `stream` keeps the compiler's common-subexpression pass from merging the draws of
# dropouts that see the same input (see FastDropout).
@torch.library.custom_op("tunekit::dropout_seed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def dropout_seed(like: torch.Tensor, stream: int) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)


@dropout_seed.register_fake
def _(like: torch.Tensor, stream: int) -> torch.Tensor:
    return torch.empty((), dtype=torch.int64)


def keep_mask(like: torch.Tensor, seed: torch.Tensor, dropped_levels: int) -> torch.Tensor:
    """True where an element of `like` survives: its 16-bit level (uniform over 0..65535) is at least
    `dropped_levels`. Element i's level is bits 16*(i % 4) .. 16*(i % 4) + 15 of hash(seed, i // 4), read
    as a signed number plus 2^15."""
    if torch.compiler.is_compiling():  # per element, so inductor fuses it into the consumer
        index = torch.arange(like.numel(), device=like.device).view(like.shape)
        words = splitmix64(seed + (index >> 2) * _GOLDEN_GAMMA)
        bits = (words >> (index & 3) * 16) & (LEVELS - 1)  # the sign bits >> copies in are masked off
        return (bits ^ LEVELS // 2) >= dropped_levels  # as the eager path's signed reading, offset by 2^15
    # Eagerly, each pass over a tensor costs: hash a quarter as many words and read them as 16-bit levels
    # (little-endian, as the shifts above; signed, hence the offset).
    words = splitmix64(seed + torch.arange(-(-like.numel() // 4), device=like.device) * _GOLDEN_GAMMA)
    return words.view(torch.int16)[: like.numel()].view(like.shape) >= dropped_levels - LEVELS // 2


# SplitMix64's constants as signed 64-bit integers (torch has no unsigned 64-bit arithmetic); products
# wrap modulo 2^64 as the unsigned ones do.
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function (Steele, Lea and Flood 2014) on int64 tensors."""
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift: torch's >> on int64 copies the sign bit, so clear what it shifted in."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def use_fast_dropout(model: nn.Module) -> None:
    """Swap PEFT's `lora_dropout` modules for FastDropout (no weights, nothing saved changes). Each adapted
    layer kind (q_proj, v_proj, ...) gets its own stream number, the same in every decoder layer, so the
    layers stay identical and torch.compile builds one graph for all of them."""
    streams: dict[str, int] = {}
    for path, module in model.named_modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        stream = streams.setdefault(path.rsplit(".", 1)[-1], len(streams))
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[name] = FastDropout(dropout.p, stream)
