"""The JSON-RPC codec: every input gives a request or a coded StratumError, never another exception."""
import pytest
import ujson
from hypothesis import given, settings
from hypothesis import strategies as st

from gstratum.protocol import rpc
from gstratum.protocol.rpc import Request, Response, StratumError


def test_decode_request():
    assert rpc.decode(b'{"id": 7, "method": "mining.subscribe", "params": ["ua"]}') == Request(
        7, "mining.subscribe", ["ua"])


def test_missing_params_means_empty_list():
    assert rpc.decode(b'{"id": "a", "method": "m"}').params == []


def test_response_from_miner_is_not_a_request():
    assert isinstance(rpc.decode(b'{"id": 1, "result": "cgminer/4", "error": null}'), Response)


@pytest.mark.parametrize("line, fragment", [
    (b"{not json", "Parse error"),
    (b"[1, 2]", "batch"),
    (b'"just a string"', "JSON object"),
    (b'{"id": 1, "method": 5}', "method must be a string"),
    (b'{"id": 1, "method": "m", "params": {"a": 1}}', "params must be an array"),
    (b'{"id": [1], "method": "m"}', "id must be"),
    (b'{"id": 1e400, "method": "m"}', "id must be"),
    (b"\xff\xfe\x00", "Parse error"),
    (b"[" * 10000 + b"]" * 10000, "Parse error"),
])
def test_bad_input_gives_code_20(line, fragment):
    with pytest.raises(StratumError) as info:
        rpc.decode(line)
    assert info.value.code == rpc.OTHER
    assert fragment in info.value.message


def test_error_keeps_request_id_when_known():
    with pytest.raises(StratumError) as info:
        rpc.decode(b'{"id": 42, "method": "m", "params": 3}')
    assert info.value.request_id == 42


def test_encodings_are_single_lines():
    assert ujson.loads(rpc.encode_result(1, True)) == {"id": 1, "result": True, "error": None}
    err = ujson.loads(rpc.encode_error(2, StratumError(23, "Low difficulty share")))
    assert err == {"id": 2, "result": None, "error": [23, "Low difficulty share", None]}
    note = rpc.encode_notification("mining.set_difficulty", [0.0025])
    assert note.endswith(b"\n") and note.count(b"\n") == 1
    assert ujson.loads(note) == {"id": None, "method": "mining.set_difficulty", "params": [0.0025]}


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_any_bytes_give_request_or_coded_error(data):
    try:
        result = rpc.decode(data)
    except StratumError as err:
        assert err.code == rpc.OTHER
    else:
        assert isinstance(result, (Request, Response))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from(["id", "method", "params", "result", "error"]), json_values))
def test_any_json_object_gives_request_or_coded_error(obj):
    try:
        line = ujson.dumps(obj).encode()
    except OverflowError:
        return
    try:
        result = rpc.decode(line)
    except StratumError as err:
        assert err.code == rpc.OTHER
    else:
        reply = rpc.encode_result(result.id, True)  # whatever id we accepted can be echoed back
        assert reply.endswith(b"\n")


@given(st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=20),
                 st.floats(allow_nan=False, allow_infinity=False), st.booleans()))
def test_accepted_reply_fast_path_is_byte_identical(request_id):
    """encode_accepted skips the JSON encoder for integer ids: the bytes must be exactly encode_result's."""
    assert rpc.encode_accepted(request_id) == rpc.encode_result(request_id, True)
