"""The inference protocol's parsing and encoding, against requests built by tritonclient itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton

from serving.protocol import (
    BINARY_HEADER,
    ModelSignature,
    ProtocolError,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)

SIG = ModelSignature(name="ctr", sparse_fields=3, dense_features=2, vocab_size=100, max_rows=8)
IDS = np.array([[1, 2, 3], [4, 5, 99]], dtype=np.int64)
DENSE = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)


def _triton_body(binary: bool, binary_output: bool = False) -> tuple[bytes, str | None]:
    ids = triton.InferInput("sparse_ids", list(IDS.shape), "INT64")
    ids.set_data_from_numpy(IDS, binary_data=binary)
    dense = triton.InferInput("dense", list(DENSE.shape), "FP32")
    dense.set_data_from_numpy(DENSE, binary_data=binary)
    outputs = [triton.InferRequestedOutput("scores", binary_data=binary_output)]
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [ids, dense], outputs=outputs, request_id="r1"
    )
    return body, (str(json_size) if json_size is not None else None)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_requests_parse(binary: bool) -> None:
    body, header = _triton_body(binary)
    request = parse_infer_request(body, header, SIG)
    assert request.id == "r1"
    np.testing.assert_array_equal(request.sparse_ids, IDS)
    np.testing.assert_array_equal(request.dense, DENSE)


def test_binary_response_decodes_in_tritonclient() -> None:
    scores = np.array([0.25, 0.75], dtype=np.float32)
    body, headers = encode_infer_response(SIG, "r1", scores, binary=True)
    result = triton.InferenceServerClient.parse_response_body(
        body, header_length=int(headers[BINARY_HEADER])
    )
    np.testing.assert_array_equal(result.as_numpy("scores"), scores)
    body, headers = encode_infer_response(SIG, None, scores, binary=False)
    data = json.loads(body)
    assert data["outputs"][0] == {
        "name": "scores",
        "datatype": "FP32",
        "shape": [2],
        "data": [0.25, 0.75],
    }


def test_json_nested_or_flat_data() -> None:
    for data in (IDS.tolist(), IDS.reshape(-1).tolist()):
        body = json.dumps(
            {
                "inputs": [
                    {"name": "sparse_ids", "shape": [2, 3], "datatype": "INT64", "data": data},
                    {"name": "dense", "shape": [2, 2], "datatype": "FP32", "data": DENSE.tolist()},
                ]
            }
        ).encode()
        np.testing.assert_array_equal(parse_infer_request(body, None, SIG).sparse_ids, IDS)


def _body(**changes: object) -> bytes:
    inputs = [
        {"name": "sparse_ids", "shape": [2, 3], "datatype": "INT64", "data": IDS.tolist()},
        {"name": "dense", "shape": [2, 2], "datatype": "FP32", "data": DENSE.tolist()},
    ]
    request: dict[str, object] = {"inputs": inputs}
    for key, value in changes.items():
        index, _, field = key.partition("__")
        if field:
            inputs[int(index[-1])][field] = value
        else:
            request[key] = value
    return json.dumps(request).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (_body(inputs="x"), "'inputs' must be a list"),
        (_body(input0__datatype="FP32"), "'sparse_ids' must have datatype INT64"),
        (_body(input0__shape=[2, 4]), r"must have shape \[rows >= 1, 3\]"),
        (_body(input0__shape=[3, 3]), "needs 9 values"),
        (_body(input0__data=[[1, 2, 3], [4, 5, 100]]), r"sparse_ids\[1\]\[2\] = 100 is outside"),
        (_body(input0__data=[[1, 2, 3], [4, 5, -1]]), "outside the vocabulary"),
        (_body(input0__data=[[1, 2, 3], [4, 5, 1.5]]), "INT64 data must be integers"),
        (_body(input1__data=[[1, 2], [3, "x"]]), "data must be a"),
        (_body(outputs=[{"name": "probs"}]), "unknown output 'probs'"),
        (_body(id=7), "'id' must be a string"),
    ],
)
def test_bad_requests_are_400_with_a_message(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        parse_infer_request(body, None, SIG)
    assert info.value.status == 400


def test_missing_input_too_many_rows_and_bad_binary_sizes() -> None:
    only_ids = json.dumps(
        {
            "inputs": [
                {"name": "sparse_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}
            ]
        }
    ).encode()
    with pytest.raises(ProtocolError, match="inputs must be sparse_ids, dense"):
        parse_infer_request(only_ids, None, SIG)
    many = np.zeros((9, 3), dtype=np.int64)
    body = json.dumps(
        {
            "inputs": [
                {"name": "sparse_ids", "shape": [9, 3], "datatype": "INT64", "data": many.tolist()},
                {"name": "dense", "shape": [9, 2], "datatype": "FP32", "data": [0.0] * 18},
            ]
        }
    ).encode()
    with pytest.raises(ProtocolError, match="at most 8 rows"):
        parse_infer_request(body, None, SIG)
    body, header = _triton_body(binary=True)
    with pytest.raises(ProtocolError, match="the body has"):
        parse_infer_request(body, str(len(body) + 1), SIG)
    with pytest.raises(ProtocolError, match="must be an integer"):
        parse_infer_request(body, "lots", SIG)
    assert header is not None
    with pytest.raises(ProtocolError, match="ends before its binary data"):
        parse_infer_request(body[:-4], header, SIG)


def test_metadata_names_inputs_and_outputs() -> None:
    meta = model_metadata(SIG)
    assert [i["name"] for i in meta["inputs"]] == ["sparse_ids", "dense"]
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1]}]
