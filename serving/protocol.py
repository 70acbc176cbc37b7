"""The Open Inference Protocol v2 (KServe / Triton REST) for the ranker: parsing and encoding.

Pure functions over bytes, no web framework, so every rule is unit-tested without a server.
Inputs: `sparse_ids` (INT64, [rows, sparse fields]) and, when the model has dense features,
`dense` (FP32, [rows, dense features]); output: `scores` (FP32, [rows]), the click probability.
Tensor data comes as JSON (flat or nested lists) or through the binary-data extension: the
`Inference-Header-Content-Length` header gives the size of the JSON header, and each input with
`parameters.binary_data_size` takes that many little-endian bytes from what follows, in order.
A request asking for `scores` with `parameters.binary_data: true` gets a binary response.
Errors raise `ProtocolError(status, message)`; the server answers `{"error": message}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BINARY_HEADER",
    "InferRequest",
    "ModelSignature",
    "ProtocolError",
    "encode_infer_response",
    "model_metadata",
    "parse_infer_request",
]

BINARY_HEADER = "Inference-Header-Content-Length"
_DTYPES: dict[str, np.dtype[Any]] = {"INT64": np.dtype("<i8"), "FP32": np.dtype("<f4")}


class ProtocolError(Exception):
    """A request the protocol rejects: HTTP `status` with `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ModelSignature:
    """What the served model takes: its name, field counts and vocabulary."""

    name: str
    sparse_fields: int
    dense_features: int
    vocab_size: int
    max_rows: int = 4096
    version: str = "1"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    sparse_ids: NDArray[np.int64]  # [rows, sparse_fields]
    dense: NDArray[np.float32]  # [rows, dense_features]
    binary_output: bool


def model_metadata(sig: ModelSignature) -> dict[str, Any]:
    """`GET /v2/models/{name}`."""
    inputs = [{"name": "sparse_ids", "datatype": "INT64", "shape": [-1, sig.sparse_fields]}]
    if sig.dense_features:
        inputs.append({"name": "dense", "datatype": "FP32", "shape": [-1, sig.dense_features]})
    return {
        "name": sig.name,
        "versions": [sig.version],
        "platform": "pytorch_torchscript",
        "inputs": inputs,
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1]}],
    }


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(
                400, f"{BINARY_HEADER} must be an integer (got {header_length!r})"
            ) from None
        if not 0 <= size <= len(body):
            raise ProtocolError(
                400, f"{BINARY_HEADER} is {size} but the body has {len(body)} bytes"
            )
        json_part, binary = body[:size], body[size:]
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(request, dict):
        raise ProtocolError(400, "the request body must be a JSON object with 'inputs'")
    return request, binary


def _tensor(
    spec: dict[str, Any], binary: memoryview, offset: int, columns: int
) -> tuple[NDArray[Any], int]:
    """One input tensor as a [rows, columns] array; returns it and the new binary offset."""
    name = spec["name"]
    want = "INT64" if name == "sparse_ids" else "FP32"
    datatype = spec.get("datatype")
    if datatype != want:
        raise ProtocolError(400, f"input '{name}' must have datatype {want} (got {datatype!r})")
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or shape[1] != columns
        or shape[0] < 1
    ):
        raise ProtocolError(
            400, f"input '{name}' must have shape [rows >= 1, {columns}] (got {shape!r})"
        )
    count = shape[0] * shape[1]
    dtype = _DTYPES[want]
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise ProtocolError(
                400,
                f"input '{name}': binary_data_size must be {count * dtype.itemsize} bytes "
                f"for shape {shape} {want} (got {size!r})",
            )
        if offset + size > len(binary):
            raise ProtocolError(400, f"input '{name}': the body ends before its binary data")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return array, offset + size
    if "data" not in spec:
        raise ProtocolError(400, f"input '{name}' has neither 'data' nor binary_data_size")
    try:
        array = np.asarray(spec["data"], dtype=np.float64 if want == "FP32" else object)
        flat = array.reshape(-1)
    except (ValueError, TypeError):
        raise ProtocolError(
            400, f"input '{name}': data must be a (nested) list of numbers"
        ) from None
    if flat.size != count:
        raise ProtocolError(
            400, f"input '{name}': shape {shape} needs {count} values (got {flat.size})"
        )
    if want == "INT64":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat.tolist()):
            raise ProtocolError(400, f"input '{name}': INT64 data must be integers")
        return np.asarray(flat.tolist(), dtype=np.int64).reshape(shape), offset
    if not np.isfinite(flat).all():
        raise ProtocolError(400, f"input '{name}': FP32 data must be finite numbers")
    return flat.astype(np.float32).reshape(shape), offset


def parse_infer_request(
    body: bytes, header_length: str | None, sig: ModelSignature
) -> InferRequest:
    """`POST /v2/models/{name}/infer` body (and the binary-extension header, if any)."""
    request, binary_part = _split_body(body, header_length)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not all(
        isinstance(i, dict) and isinstance(i.get("name"), str) for i in inputs
    ):
        raise ProtocolError(400, "'inputs' must be a list of {name, shape, datatype, data}")
    expected = ["sparse_ids"] + (["dense"] if sig.dense_features else [])
    names = [i["name"] for i in inputs]
    if sorted(names) != sorted(expected):
        raise ProtocolError(
            400, f"inputs must be {', '.join(expected)} (got {', '.join(names) or 'none'})"
        )
    binary = memoryview(binary_part)
    offset = 0
    tensors: dict[str, NDArray[Any]] = {}
    for spec in inputs:
        columns = sig.sparse_fields if spec["name"] == "sparse_ids" else sig.dense_features
        tensors[spec["name"]], offset = _tensor(spec, binary, offset, columns)
    if offset != len(binary):
        raise ProtocolError(400, f"{len(binary) - offset} bytes of binary data belong to no input")
    ids = tensors["sparse_ids"]
    rows = ids.shape[0]
    if rows > sig.max_rows:
        raise ProtocolError(400, f"at most {sig.max_rows} rows per request (got {rows})")
    dense = tensors.get("dense", np.zeros((rows, 0), dtype=np.float32))
    if dense.shape[0] != rows:
        raise ProtocolError(400, f"'dense' has {dense.shape[0]} rows but 'sparse_ids' has {rows}")
    bad = (ids < 0) | (ids >= sig.vocab_size)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ProtocolError(
            400,
            f"sparse_ids[{row}][{col}] = {int(ids[row, col])} is outside the vocabulary "
            f"[0, {sig.vocab_size})",
        )
    return InferRequest(
        id=_request_id(request),
        sparse_ids=np.ascontiguousarray(ids, dtype=np.int64),
        dense=np.ascontiguousarray(dense, dtype=np.float32),
        binary_output=_binary_output(request),
    )


def _request_id(request: dict[str, Any]) -> str | None:
    rid = request.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(400, f"'id' must be a string (got {rid!r})")
    return rid


def _binary_output(request: dict[str, Any]) -> bool:
    outputs = request.get("outputs")
    if outputs is None:
        return False
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ProtocolError(400, "'outputs' must be a list of {name, parameters}")
    binary = False
    for out in outputs:
        if out.get("name") != "scores":
            raise ProtocolError(
                400, f"unknown output {out.get('name')!r}; the model outputs 'scores'"
            )
        binary = bool((out.get("parameters") or {}).get("binary_data", False))
    return binary


def encode_infer_response(
    sig: ModelSignature, request_id: str | None, scores: NDArray[np.float32], binary: bool
) -> tuple[bytes, dict[str, str]]:
    """Body and extra headers of the response (binary extension when the request asked for it)."""
    output: dict[str, Any] = {"name": "scores", "datatype": "FP32", "shape": [int(scores.shape[0])]}
    raw = np.ascontiguousarray(scores, dtype="<f4").tobytes()
    if binary:
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = [float(x) for x in scores]
    response: dict[str, Any] = {
        "model_name": sig.name,
        "model_version": sig.version,
        "outputs": [output],
    }
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response).encode()
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + raw, {
        "Content-Type": "application/octet-stream",
        BINARY_HEADER: str(len(header)),
    }
