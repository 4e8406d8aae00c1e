"""Safetensors dtype names, their numpy storage types, and float32 conversions.

numpy has no bfloat16, so BF16 is stored as ``uint16`` and converted with bit
arithmetic; float32 -> bfloat16 rounds to nearest even, exactly like torch.
"""

from __future__ import annotations

import numpy as np

STORAGE: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
    "F8_E4M3": np.dtype("u1"),
    "F8_E5M2": np.dtype("u1"),
}
FLOATS = ("F64", "F32", "BF16", "F16")  # mergeable, widest first

ALIASES: dict[str, str] = {
    "float64": "F64", "double": "F64", "fp64": "F64",
    "float32": "F32", "float": "F32", "fp32": "F32",
    "float16": "F16", "half": "F16", "fp16": "F16",
    "bfloat16": "BF16", "bf16": "BF16",
}

TORCH_NAMES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
FROM_TORCH: dict[str, str] = {v: k for k, v in TORCH_NAMES.items()}


def itemsize(dtype: str) -> int:
    """Bytes per element of safetensors dtype ``dtype``."""
    return STORAGE[dtype].itemsize


def is_float(dtype: str) -> bool:
    """Whether tensors of ``dtype`` are merged (floats) rather than copied."""
    return dtype in FLOATS


def widest(dtypes: list[str]) -> str:
    """The widest float dtype among ``dtypes`` (BF16 and F16 together give F32)."""
    present = set(dtypes)
    if present == {"BF16", "F16"}:
        return "F32"
    return next(d for d in FLOATS if d in present)


def parse_dtype(name: str) -> str:
    """Normalise a user-facing dtype name (``bfloat16``, ``fp16``, ``F32``...)."""
    key = name.strip()
    if key.upper() in FLOATS:
        return key.upper()
    if key.lower().removeprefix("torch.") in ALIASES:
        return ALIASES[key.lower().removeprefix("torch.")]
    raise ValueError(f"unknown dtype {name!r}; use float32, float16 or bfloat16")


def to_float32(raw: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    """Convert ``raw`` (storage of ``dtype``) into the float32 array ``out``."""
    if dtype == "BF16":
        widened = out.view(np.uint32)
        np.left_shift(raw, 16, out=widened, dtype=np.uint32)
    else:
        out[...] = raw
    return out


def from_float32(values: np.ndarray, dtype: str, out: np.ndarray | None = None, work: np.ndarray | None = None,
                 finite: bool = False) -> np.ndarray:
    """Convert float32 ``values`` to the storage array of ``dtype`` (round to nearest even).

    For bfloat16, ``work`` (uint32, ``values``' size) is scratch the caller keeps, and
    ``finite=True`` (the caller knows there is no NaN) skips the NaN pass.
    """
    if dtype == "F32":
        return values
    if dtype == "BF16":
        shape, values = values.shape, values.reshape(-1)
        bits = values.view(np.uint32)
        work = np.right_shift(bits, np.uint32(16), out=work)  # the rounding increment, built in place
        np.bitwise_and(work, np.uint32(1), out=work)
        np.add(work, np.uint32(0x7FFF), out=work)
        np.add(work, bits, out=work)
        if out is None:
            out = np.empty(values.shape, dtype=np.uint16)
        rounded = np.right_shift(work, np.uint32(16), out=out, casting="unsafe")
        if not finite:
            nan = np.isnan(values)
            if nan.any():
                nan = np.flatnonzero(nan)
                rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
        return rounded.reshape(shape)
    return values.astype(STORAGE[dtype])
