"""Correctly rounded elementwise operations, on numpy arrays (host) or torch tensors (any device).

AME's default arithmetic (:mod:`~hf_soup.methods.ame.portable`) is written once against
this small interface. Every operation is a single IEEE 754 operation per element —
add, subtract, multiply, divide, square root, or an exact one (negate, absolute value,
maximum, minimum, select) — so its result is the correctly rounded one on any hardware:
SIMD or scalar code, CPU or CUDA, whatever the array's length or alignment. Nothing here
can fuse a multiply and an add into one rounding: no ``lerp``, ``addcmul``, ``addcdiv``,
``alpha=`` arguments, ``foreach`` or fused kernels, no ``torch.compile``. One deliberate
detour: torch on CUDA turns a division by a host scalar into a multiplication by its
reciprocal, so :class:`TorchOps` divides by a 0-dim tensor on the device instead; and
torch's float64 ``sqrt`` on the CPU goes through MKL's vector library, which is not
correctly rounded (measured: 1.4 % of random inputs one ulp off), so :class:`TorchOps`
takes numpy's square root for CPU tensors (CUDA's is correctly rounded).

Results go into ``out`` (preallocated, float64), which the call also returns; a second
operand may be an array or a Python float.

>>> import numpy as np
>>> ops = NumpyOps()
>>> out = np.empty(2)
>>> ops.div(ops.add(np.array([1.0, 2.0]), 0.5, out), 3.0, out)
array([0.5       , 0.83333333])
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # a float64 numpy array or torch tensor (or a float32 one as an input)


class NumpyOps:
    """The operations on numpy arrays (the host path)."""

    device = "cpu"

    @staticmethod
    def empty(count: int) -> np.ndarray:
        return np.empty(count, dtype=np.float64)

    @staticmethod
    def empty_mask(count: int) -> np.ndarray:
        return np.empty(count, dtype=np.bool_)

    @staticmethod
    def fill(out: np.ndarray, value: float) -> np.ndarray:
        out.fill(value)
        return out

    @staticmethod
    def copy(out: np.ndarray, a: Array) -> np.ndarray:
        np.copyto(out, a)
        return out

    @staticmethod
    def add(a: Array, b: Array, out: np.ndarray) -> np.ndarray:
        return np.add(a, b, out=out)

    @staticmethod
    def sub(a: Array, b: Array, out: np.ndarray) -> np.ndarray:
        return np.subtract(a, b, out=out)

    @staticmethod
    def mul(a: Array, b: Array, out: np.ndarray) -> np.ndarray:
        return np.multiply(a, b, out=out)

    @staticmethod
    def div(a: Array, b: Array, out: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=out)

    @staticmethod
    def sqrt(a: Array, out: np.ndarray) -> np.ndarray:
        return np.sqrt(a, out=out)

    @staticmethod
    def neg(a: Array, out: np.ndarray) -> np.ndarray:
        return np.negative(a, out=out)

    @staticmethod
    def abs(a: Array, out: np.ndarray) -> np.ndarray:
        return np.absolute(a, out=out)

    @staticmethod
    def maximum(a: Array, b: Array, out: np.ndarray) -> np.ndarray:
        return np.maximum(a, b, out=out)

    @staticmethod
    def clamp(a: Array, low: float, high: float, out: np.ndarray) -> np.ndarray:
        np.maximum(a, low, out=out)
        return np.minimum(out, high, out=out)

    @staticmethod
    def greater(a: Array, b: float, out: np.ndarray) -> np.ndarray:
        return np.greater(a, b, out=out)

    @staticmethod
    def less(a: Array, b: float, out: np.ndarray) -> np.ndarray:
        return np.less(a, b, out=out)

    @staticmethod
    def put(out: np.ndarray, mask: np.ndarray, value: Array) -> np.ndarray:
        """``out[mask] = value`` (``value``: a float, or an array of ``out``'s shape)."""
        np.copyto(out, value, where=mask)
        return out


class TorchOps:
    """The same operations on torch tensors of ``device`` (CUDA, or the CPU in tests)."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = device

    def empty(self, count: int) -> Any:
        return self.torch.empty(count, dtype=self.torch.float64, device=self.device)

    def empty_mask(self, count: int) -> Any:
        return self.torch.empty(count, dtype=self.torch.bool, device=self.device)

    def fill(self, out: Any, value: float) -> Any:
        return out.fill_(value)

    def copy(self, out: Any, a: Array) -> Any:
        return out.copy_(a)

    def add(self, a: Array, b: Array, out: Any) -> Any:
        return self.torch.add(a, b, out=out)

    def sub(self, a: Array, b: Array, out: Any) -> Any:
        return self.torch.sub(a, b, out=out)

    def mul(self, a: Array, b: Array, out: Any) -> Any:
        return self.torch.mul(a, b, out=out)

    def div(self, a: Array, b: Array, out: Any) -> Any:
        if isinstance(b, (int, float)):  # on CUDA, a host scalar divisor becomes a reciprocal multiplication
            b = self.torch.full((), float(b), dtype=self.torch.float64, device=self.device)
        return self.torch.div(a, b, out=out)

    def sqrt(self, a: Array, out: Any) -> Any:
        if out.device.type == "cpu":  # torch's CPU sqrt (MKL's vector library) is not correctly rounded
            np.sqrt(a.numpy(), out=out.numpy())
            return out
        return self.torch.sqrt(a, out=out)  # CUDA's double sqrt is IEEE round-to-nearest

    def neg(self, a: Array, out: Any) -> Any:
        return self.torch.neg(a, out=out)

    def abs(self, a: Array, out: Any) -> Any:
        return self.torch.abs(a, out=out)

    def maximum(self, a: Array, b: Array, out: Any) -> Any:
        return self.torch.maximum(a, b, out=out)

    def clamp(self, a: Array, low: float, high: float, out: Any) -> Any:
        return self.torch.clamp(a, low, high, out=out)

    def greater(self, a: Array, b: float, out: Any) -> Any:
        return self.torch.gt(a, b, out=out)

    def less(self, a: Array, b: float, out: Any) -> Any:
        return self.torch.lt(a, b, out=out)

    def put(self, out: Any, mask: Any, value: Array) -> Any:
        """``out[mask] = value`` (``value``: a float, or a tensor of ``out``'s shape)."""
        if isinstance(value, (int, float)):
            return out.masked_fill_(mask, value)
        return self.torch.where(mask, value, out, out=out)


def ops_for(device: str) -> NumpyOps | TorchOps:
    """numpy on the host (``cpu``), torch on any other device."""
    return NumpyOps() if device == "cpu" else TorchOps(device)
