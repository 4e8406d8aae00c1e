"""Round a merged result once, correctly, to the output dtype (numpy on the host, torch on a device).

Methods compute in float64 (or float32) and the engine rounds their result here, once.
float64 -> float32 and float32 -> bfloat16 / float16 round to nearest even. float64 ->
bfloat16 / float16 would round twice through float32. numpy rounds float64 -> float16
directly; the torch version (for both 16-bit formats) goes through float32 with *round-to-odd*: the float32 value
keeps a sticky last bit when it is inexact, and the second rounding (to nearest even)
then gives the correctly rounded result, because float32 carries more than two extra bits
over either 16-bit format. bfloat16 on the host takes a faster road to the same result
(see :func:`_float64_to_bfloat16`). A correctly rounded result is unique, so the host and
a device give the same bytes.

>>> import numpy as np
>>> value = np.array([1 + 2.0**-8 + 2.0**-30])            # just above a bfloat16 midpoint
>>> hex(int(round_to_storage(value, "BF16")[0]))          # correct: rounds up
'0x3f81'
>>> hex(int(round_to_storage(value.astype(np.float32), "BF16")[0]))  # float32 already lost the tail
'0x3f80'
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np

from ..io import dtypes

#: ``scratch(name, dtype, count)``: a reusable array of ``count`` elements (see ``ReadBuffers.get``).
Scratch = Callable[[str, Any, int], np.ndarray]


def round_to_odd_float32(values: np.ndarray) -> np.ndarray:
    """float64 ``values`` -> float32, truncated toward zero with the last bit set when inexact."""
    with np.errstate(over="ignore"):  # beyond float32: infinity, stepped back to the largest finite below
        nearest = values.astype(np.float32)
    bits = nearest.view(np.uint32)
    widened = nearest.astype(np.float64)
    inexact = (widened != values) & np.isfinite(values)
    # nearest rounded away from zero: step one ulp back toward zero (the magnitude bits shrink by one)
    away = inexact & (np.abs(widened) > np.abs(values))
    bits -= away.view(np.uint8).astype(np.uint32)
    bits |= inexact.view(np.uint8).astype(np.uint32)
    return nearest


def float32_to_storage(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 ``values`` -> the storage array of ``dtype`` (round to nearest even)."""
    return dtypes.from_float32(values, dtype)


def _float64_to_bfloat16(values: np.ndarray, out: np.ndarray | None = None, scratch: Scratch | None = None,
                         finite: bool = False) -> np.ndarray:
    """float64 -> bfloat16 bits, correctly rounded: through float32, then the upper 16 bits rounded.

    ``(bits + 0x8000) >> 16`` rounds float32 to bfloat16 to nearest, ties away from zero.
    Only elements whose float32 lands exactly on a bfloat16 midpoint (low 16 bits 0x8000)
    need more: an exact tie goes to even, and a value that float32 rounded onto the
    midpoint (the rare double rounding) goes toward the side its float64 value lies on.
    """
    shape, values = values.shape, values.reshape(-1)
    count = values.size
    nearest = np.empty(count, np.float32) if scratch is None else scratch("nearest", np.float32, count)
    work = np.empty(count, np.uint32) if scratch is None else scratch("work", np.uint32, count)
    with np.errstate(over="ignore"):
        np.copyto(nearest, values, casting="same_kind")
    bits = nearest.view(np.uint32)
    np.add(bits, np.uint32(0x8000), out=work)
    out = np.empty(count, np.uint16) if out is None else out.reshape(-1)
    rounded = np.right_shift(work, np.uint32(16), out=out, casting="unsafe")
    if not finite:
        _keep_nans(nearest, bits, rounded)
    first = 0 if sys.byteorder == "little" else 1
    low_halves = nearest.view(np.uint16)[first::2]  # the low 16 bits of each float32
    suspects = np.equal(low_halves, np.uint16(0x8000), out=work.view(np.bool_)[:count])  # the scratch is free
    if suspects.any():  # often: exact means of bfloat16 values sit on midpoints
        keep = np.empty(count, np.uint16) if scratch is None else scratch("keep", np.uint16, count)
        np.subtract(np.uint16(0xFFFF), suspects, out=keep, dtype=np.uint16)  # 0xFFFE on a midpoint, else 0xFFFF
        np.bitwise_and(rounded, keep, out=rounded)  # exact ties: to even
        inexact = np.empty(count, np.bool_) if scratch is None else scratch("inexact", np.bool_, count)
        np.not_equal(values, nearest, out=inexact)
        np.logical_and(suspects, inexact, out=suspects)
        if suspects.any():
            _fix_double_roundings(values, nearest, rounded, np.flatnonzero(suspects))
    return rounded.reshape(shape)


def _keep_nans(nearest: np.ndarray, bits: np.ndarray, rounded: np.ndarray) -> None:
    """NaN stays a (quiet) NaN: its upper bits with the quiet bit set, whatever the payload."""
    nan = np.isnan(nearest)
    if nan.any():
        nan = np.flatnonzero(nan)
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)


def _fix_double_roundings(values: np.ndarray, nearest: np.ndarray, rounded: np.ndarray, suspects: np.ndarray) -> None:
    """Round ``suspects`` (inexact float32 values on a bfloat16 midpoint) toward their float64 side."""
    exact = values[suspects]
    landed = nearest[suspects].astype(np.float64)
    finite = np.isfinite(exact)
    up = (np.abs(exact) > np.abs(landed)).astype(np.uint32)
    fixed = ((nearest.view(np.uint32)[suspects] >> np.uint32(16)) + up).astype(np.uint16)
    rounded[suspects] = np.where(finite, fixed, rounded[suspects])


def round_to_storage(values: np.ndarray, dtype: str, out: np.ndarray | None = None, scratch: Scratch | None = None,
                     finite: bool = False) -> np.ndarray:
    """A method's float64 or float32 result -> the storage array of ``dtype``, rounded once (into ``out``).

    ``scratch(name, dtype, count)`` lends reusable arrays (the engine's per-thread buffers), so
    no temporary is allocated; ``finite=True`` (the caller checked there is no NaN) skips a pass.
    """
    if values.dtype == np.float64 and dtype == "BF16":
        return _float64_to_bfloat16(values, out, scratch, finite)
    if out is not None and values.dtype == np.float64 and dtype in ("F32", "F16", "F64"):
        with np.errstate(over="ignore"):  # one correctly rounded cast straight into the output
            np.copyto(out, values, casting="same_kind")
        return out
    result = _round(values, dtype)
    if out is None:
        return result
    out[...] = result
    return out


def _round(values: np.ndarray, dtype: str) -> np.ndarray:
    if values.dtype == np.float64:
        if dtype == "F64":
            return values
        if dtype == "F32":
            with np.errstate(over="ignore"):
                return values.astype(np.float32)
        if dtype == "F16":  # numpy rounds float64 -> float16 directly, once
            with np.errstate(over="ignore"):
                return values.astype(np.float16)
        return float32_to_storage(round_to_odd_float32(values), dtype)
    return float32_to_storage(np.asarray(values, dtype=np.float32), dtype)


def _round_to_odd_float32_torch(values: Any) -> Any:
    import torch

    nearest = values.to(torch.float32)
    widened = nearest.to(torch.float64)
    inexact = (widened != values) & torch.isfinite(values)
    away = inexact & (widened.abs() > values.abs())
    bits = nearest.view(torch.int32)
    bits -= away.to(torch.int32)
    bits |= inexact.to(torch.int32)
    return nearest


def _float32_to_bfloat16_bits_torch(values: Any) -> Any:
    """float32 -> bfloat16 bits (int16), round to nearest even, NaN kept quiet: as ``dtypes.from_float32``."""
    import torch

    bits = values.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16
    nan = torch.isnan(values)
    rounded = torch.where(nan, (bits >> 16) | 0x40, rounded)
    return (rounded & 0xFFFF).to(torch.int32).to(torch.int16)


def round_to_storage_torch(values: Any, dtype: str, out: Any = None) -> Any:
    """:func:`round_to_storage` on a torch tensor (any device); returns a tensor of the storage dtype.

    bfloat16 comes back as int16 bits (the numpy storage of BF16 is uint16). ``out`` (of
    that dtype and ``values``' shape) receives the result, which is then ``out``.
    """
    import torch

    if out is not None:
        if values.dtype == torch.float64 and dtype == "F32":
            return out.copy_(values)  # the same conversion as .to(torch.float32), without a new tensor
        return out.copy_(round_to_storage_torch(values, dtype))
    if values.dtype == torch.float64:
        if dtype == "F64":
            return values
        if dtype == "F32":
            return values.to(torch.float32)
        values = _round_to_odd_float32_torch(values)
    else:
        values = values.to(torch.float32)
    if dtype == "F32":
        return values
    if dtype == "F64":
        return values.to(torch.float64)
    if dtype == "BF16":
        return _float32_to_bfloat16_bits_torch(values)
    return values.to(getattr(torch, dtypes.TORCH_NAMES[dtype]))


__all__ = ["round_to_odd_float32", "round_to_storage", "round_to_storage_torch"]
