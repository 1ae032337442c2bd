"""Input validation at the boundary: a request body becomes a float32 (N, C, H, W) tensor, or a 422 saying why.

The model never sees what fails here: wrong shape, non-numbers, ragged lists, NaN/Inf, values outside the
input range (beyond 1e-6), too many or zero rows, base64 that does not decode or does not match its shape.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ramparts.gateway.errors import invalid_input
from ramparts.gateway.schemas import PredictRequest

RANGE_TOLERANCE = 1e-6


def decode_inputs(
    body: PredictRequest,
    *,
    input_shape: Sequence[int],
    input_range: tuple[float, float],
    max_batch: int,
) -> Tensor:
    """The request's rows as a float32 tensor (N, *input_shape); raises `ApiError` 422 naming the field."""
    shape = tuple(int(s) for s in input_shape)
    if (body.inputs is None) == (body.inputs_b64 is None):
        raise invalid_input(
            "inputs", "give exactly one of inputs (nested lists) or inputs_b64 (+ dtype, shape)"
        )
    if body.inputs is not None:
        if body.dtype is not None or body.shape is not None:
            raise invalid_input("dtype", "dtype and shape go with inputs_b64 only; nested inputs are numbers")
        param = "inputs"
        array = _from_lists(body.inputs, max_batch)
    else:
        param = "inputs_b64"
        array = _from_base64(body, input_range, max_batch)
    array = _to_batch(array, shape, param, max_batch)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise invalid_input(param, f"{bad} value(s) are NaN or infinite; send finite numbers")
    low, high = input_range
    outside = (array < low - RANGE_TOLERANCE) | (array > high + RANGE_TOLERANCE)
    if outside.any():
        count = int(outside.sum())
        raise invalid_input(
            param,
            f"{count} value(s) outside the input range [{low:g}, {high:g}] (min {float(array.min()):g}, "
            f"max {float(array.max()):g}); scale the inputs into the range",
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _from_lists(values: list[object], max_batch: int) -> np.ndarray:
    if len(values) == 0:
        raise invalid_input("inputs", "no rows: send at least one input")
    if len(values) > max_batch and isinstance(values[0], list):  # a flat list is one bad row, not a batch
        raise invalid_input(
            "inputs", f"{len(values)} rows, more than the batch limit of {max_batch}; split the batch"
        )
    if not _all_numbers(values):
        raise invalid_input("inputs", "every value must be a number (no strings, booleans or nulls)")
    try:
        return np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise invalid_input(
            "inputs", "the nested lists are not rectangular: every row must have the same shape"
        ) from None


def _all_numbers(values: list[object]) -> bool:
    stack: list[object] = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, int | float):
            return False
    return True


def _from_base64(body: PredictRequest, input_range: tuple[float, float], max_batch: int) -> np.ndarray:
    if body.dtype is None:
        raise invalid_input("dtype", "inputs_b64 needs dtype: float32 or uint8")
    if body.shape is None:
        raise invalid_input("shape", "inputs_b64 needs shape: [N, C, H, W] or [N, C*H*W]")
    dims = body.shape
    if len(dims) not in (2, 4) or any(d < 1 for d in dims):
        raise invalid_input("shape", f"expected [N, C, H, W] or [N, C*H*W] of positive integers, got {dims}")
    if dims[0] > max_batch:
        raise invalid_input(
            "shape", f"{dims[0]} rows, more than the batch limit of {max_batch}; split the batch"
        )
    if any(d > 1 << 24 for d in dims):
        raise invalid_input("shape", f"dimensions too large: {dims}")
    try:
        raw = base64.b64decode(body.inputs_b64 or "", validate=True)
    except (binascii.Error, ValueError):
        raise invalid_input("inputs_b64", "not valid base64 (standard alphabet, with padding)") from None
    itemsize = 4 if body.dtype == "float32" else 1
    expected = math.prod(dims) * itemsize
    if len(raw) != expected:
        raise invalid_input(
            "inputs_b64",
            f"{len(raw)} bytes decoded, but shape {dims} of {body.dtype} needs {expected} bytes",
        )
    if body.dtype == "float32":
        return np.frombuffer(raw, dtype="<f4").reshape(dims).astype(np.float64)
    low, high = input_range
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims).astype(np.float64) / 255.0 * (high - low) + low


def _to_batch(array: np.ndarray, shape: tuple[int, ...], param: str, max_batch: int) -> np.ndarray:
    features = math.prod(shape)
    want = f"[N, {', '.join(map(str, shape))}] or flat rows [N, {features}]"
    if array.ndim < 2:
        raise invalid_input(
            param, f"shape {list(array.shape)} does not fit the model: expected a batch {want}"
        )
    n = array.shape[0]
    if n == 0:
        raise invalid_input(param, "no rows: send at least one input")
    if n > max_batch:
        raise invalid_input(param, f"{n} rows, more than the batch limit of {max_batch}; split the batch")
    if array.ndim == 1 + len(shape) and tuple(array.shape[1:]) == shape:
        return array
    if array.ndim == 2 and array.shape[1] == features:
        return array.reshape(n, *shape)
    raise invalid_input(param, f"shape {list(array.shape)} does not fit the model: expected {want}")


__all__ = ["RANGE_TOLERANCE", "decode_inputs"]
