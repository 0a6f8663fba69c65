"""QLoRA's frozen 4-bit linear as one torch custom op with its own backward, so compiled graphs are cached.

bitsandbytes' `matmul_4bit` runs through an `autograd.Function` (MatMul4Bit), and AOTAutograd does not cache
graphs that contain one ("Can't cache HigherOrderOperator: autograd_function_apply"): every QLoRA run
compiled its layers afresh, a first step of 10-11 s against ~3.5 s for LoRA. A custom op with a registered
backward is cacheable. The arithmetic is bitsandbytes' own, op for op: its 4-bit gemm forward, and for the
input's gradient the weight dequantized to the compute dtype, then a matmul. The base weight is frozen, so
there is no weight gradient (as in MatMul4Bit).
"""

from __future__ import annotations

from typing import Any

import bitsandbytes  # noqa: F401  (registers the bitsandbytes:: ops used below)
import torch
from bitsandbytes.nn import Linear4bit
from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

Tensor = torch.Tensor


@torch.library.custom_op("tunekit::linear_4bit", mutates_args=())
def linear_4bit_op(
    x: Tensor,
    packed: Tensor,
    shape: list[int],
    absmax: Tensor,
    blocksize: int,
    quant_type: str,
    weight_dtype: torch.dtype,
    absmax_8bit: Tensor | None,
    absmax_code: Tensor | None,
    absmax_offset: Tensor | None,
) -> Tensor:
    """x @ W.T for the 4-bit W: bitsandbytes' gemm, arguments as MatMul4Bit passes them. With double
    quantization `absmax` holds the second-level constants and `absmax_8bit` the 8-bit first level."""
    return torch.ops.bitsandbytes.gemm_4bit.default(
        x, packed, shape, absmax, blocksize, quant_type,
        absmax_8bit=absmax_8bit, absmax_code=absmax_code, absmax_offset=absmax_offset,
    )


@linear_4bit_op.register_fake
def _(x, packed, shape, absmax, blocksize, quant_type, weight_dtype, absmax_8bit, absmax_code, absmax_offset):
    return x.new_empty((*x.shape[:-1], shape[0]))


def dequantized_weight(packed, shape, absmax, blocksize, quant_type, weight_dtype, absmax_8bit, absmax_code,
                       absmax_offset) -> Tensor:
    """W as bitsandbytes.functional.dequantize_4bit computes it from a QuantState."""
    if absmax_8bit is not None:  # double quantization: first the 8-bit absmax, in blocks of 256 (gemm's only size)
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            absmax_8bit, absmax, absmax_code, 256, torch.float32
        ) + absmax_offset
    return torch.ops.bitsandbytes.dequantize_4bit.default(packed, absmax, blocksize, quant_type, shape, weight_dtype)


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    _x, packed, shape, absmax, blocksize, quant_type, weight_dtype, absmax_8bit, absmax_code, absmax_offset = inputs
    ctx.save_for_backward(packed, absmax, absmax_8bit, absmax_code, absmax_offset)
    ctx.static = (shape, blocksize, quant_type, weight_dtype)


def _backward(ctx: Any, grad: Tensor) -> tuple:
    packed, absmax, absmax_8bit, absmax_code, absmax_offset = ctx.saved_tensors
    shape, blocksize, quant_type, weight_dtype = ctx.static
    weight = dequantized_weight(packed, shape, absmax, blocksize, quant_type, weight_dtype, absmax_8bit,
                                absmax_code, absmax_offset)
    return torch.matmul(grad, weight.to(grad.dtype)), *([None] * 9)


linear_4bit_op.register_autograd(_backward, setup_context=_setup_context)


def linear_4bit(x: Tensor, weight: Tensor) -> Tensor:
    """x @ W.T for a bitsandbytes Params4bit W, differentiable in x."""
    state = weight.quant_state
    packed = weight.view(-1, 1)  # the canonical layout MatMul4Bit normalises to
    if not state.nested:
        return linear_4bit_op(x, packed, list(state.shape), state.absmax, state.blocksize, state.quant_type,
                              state.dtype, None, None, None)
    if state.state2.blocksize != 256:  # the gemm's only nested block size; MatMul4Bit refuses the rest too
        raise NotImplementedError("nested 4-bit quantization with a second-level block size other than 256")
    return linear_4bit_op(x, packed, list(state.shape), state.state2.absmax, state.blocksize, state.quant_type,
                          state.dtype, state.absmax, state.state2.code, state.offset)


class TrainableLinear4bit(Linear4bit):
    """bitsandbytes' Linear4bit with a forward through `linear_4bit`. It also never repacks the weight into
    bitsandbytes' CPU inference layout, whose kernel has no backward (see qlora.py)."""

    def forward(self, x: Tensor) -> Tensor:
        fix_4bit_weight_quant_state_from_module(self)
        inp_dtype = x.dtype
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        out = linear_4bit(x, self.weight)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(inp_dtype)


def make_trainable(model: torch.nn.Module) -> int:
    """Give every Linear4bit of `model` the cacheable forward; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is Linear4bit:
            module.__class__ = TrainableLinear4bit  # same state, new forward: nothing is copied
            count += 1
    return count
