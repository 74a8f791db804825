"""The wire format: binary msgpack frames, numpy arrays in openpi's encoding.

An array travels as the map ``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": <numpy
dtype string, e.g. "<f4">, b"shape": [..]}`` and a numpy scalar as ``{b"__npgeneric__": True,
b"data": <value>, b"dtype": ..}``, exactly as ``openpi_client.msgpack_numpy`` writes them, so the
real openpi client and this server understand each other. Decoding never unpickles: only bool,
integer and float dtypes are accepted, and the byte count must match the shape.
"""
from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

__all__ = ["WireError", "packb", "unpackb", "ALLOWED_KINDS"]

#: numpy dtype kinds an array may have on the wire: bool, signed and unsigned int, float.
ALLOWED_KINDS = "biuf"


class WireError(ValueError):
    """A frame that is not valid msgpack or holds an array we refuse; the message says why."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in ALLOWED_KINDS:
        raise WireError(f"cannot send an array of dtype {obj.dtype}; send bool, int or float arrays")
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": data.tobytes(), b"dtype": data.dtype.str, b"shape": list(data.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _field(obj: dict, name: str) -> Any:
    """A descriptor field, whether the sender wrote its key as bytes (openpi) or as a string."""
    return obj[name.encode()] if name.encode() in obj else obj.get(name)


def _dtype(obj: dict) -> np.dtype:
    raw = _field(obj, "dtype")
    try:
        dtype = np.dtype(raw.decode() if isinstance(raw, bytes) else str(raw))
    except TypeError:
        raise WireError(f"array dtype {raw!r} is not a numpy dtype string such as '<f4'") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject:
        raise WireError(f"array dtype {dtype} is refused (object, void and complex arrays are never decoded); send float32")
    return dtype


def _decode(obj: dict) -> Any:
    if _field(obj, "__ndarray__"):
        dtype, data, shape = _dtype(obj), _field(obj, "data"), _field(obj, "shape")
        if not isinstance(data, bytes) or not isinstance(shape, (list, tuple)) or not all(
            isinstance(s, int) and s >= 0 for s in shape
        ):
            raise WireError("an __ndarray__ map needs bytes 'data' and a list of non-negative ints 'shape'")
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise WireError(f"array of shape {list(shape)} and dtype {dtype} needs {math.prod(shape) * dtype.itemsize} "
                            f"bytes of data, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if _field(obj, "__npgeneric__"):
        return _dtype(obj).type(_field(obj, "data"))
    return obj


def packb(obj: Any) -> bytes:
    """One binary frame (msgpack; numpy arrays and scalars in openpi's encoding)."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(frame: bytes) -> Any:
    """Decode one binary frame; :class:`WireError` when it is not valid msgpack or holds a refused array."""
    try:
        return msgpack.unpackb(frame, object_hook=_decode, raw=False, strict_map_key=False)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # ExtraData, FormatError, StackError...
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise WireError(f"the frame is not valid msgpack ({detail}); send one msgpack map per binary frame") from None
