"""The sans-I/O protocol core: commands, body pairing, URLs, query filtering."""

import json

import pytest

from relay import protocol as p


def test_inline_request_round_trip_keeps_types():
    cmd = p.RequestCommand(
        address="wss://h/$hc/orders?sb-hc-action=request&sb-hc-id=1", id="1", request_target="/orders/x?a=1",
        method="POST", request_headers={"Content-Type": "text/plain"}, body=True,
    )
    decoded = p.decode_command(p.encode_command(cmd))
    assert decoded == cmd and not decoded.is_address_only and decoded.has_body


def test_address_only_request_omits_method_and_body():
    text = p.encode_command(p.RequestCommand(address="wss://h/$hc/x?sb-hc-action=request", id="7"))
    inner = json.loads(text)["request"]
    assert set(inner) == {"address", "id"}
    assert p.decode_command(text).is_address_only


@pytest.mark.parametrize("code", [200, "200"])
def test_response_status_accepts_number_or_string(code):
    cmd = p.decode_command(json.dumps({"response": {"requestId": "r", "statusCode": code, "body": False}}))
    assert cmd.status_code == 200


@pytest.mark.parametrize(
    "text, error",
    [
        ("not json", "not valid JSON"),
        ("[]", "exactly one command key"),
        ('{"response": {"requestId": "r", "statusCode": "abc"}}', "statusCode"),
        ('{"request": {"id": "x"}}', "address"),
        ('{"response": {"requestId": "r", "statusCode": 200, "body": "yes"}}', "boolean"),
    ],
)
def test_malformed_commands_say_what_is_wrong(text, error):
    with pytest.raises(p.ProtocolError, match=error):
        p.decode_command(text)


def test_unknown_command_is_ignored_not_fatal():
    assert isinstance(p.decode_command('{"injectFault": {}}'), p.UnknownCommand)


def test_reader_pairs_body_with_its_command():
    reader = p.CommandReader()
    text = p.encode_command(p.ResponseCommand(request_id="r", status_code=200, body=True))
    assert reader.feed(text) is None and reader.awaiting_body
    command, body = reader.feed(b"hello")
    assert command.request_id == "r" and body == b"hello"
    command, body = reader.feed('{"renewToken": {"token": "s3cr3t-value"}}')
    assert body is None and "s3cr3t" not in repr(command)


def test_reader_rejects_body_out_of_place():
    reader = p.CommandReader()
    with pytest.raises(p.ProtocolError):
        reader.feed(b"stray")
    reader.feed(p.encode_command(p.ResponseCommand(request_id="r", status_code=200, body=True)))
    with pytest.raises(p.ProtocolError):
        reader.feed('{"renewToken": {"token": "t"}}')


@pytest.mark.parametrize(
    "query, expected",
    [
        ("a=1&sb-hc-token=x&b=2", "a=1&b=2"),
        ("sb-hc-undefined", "sb-hc-undefined"),
        ("SB-HC-Whatever=", ""),
        ("&&&", "&&&"),
        ("a=1&a=2&", "a=1&a=2&"),
        ("", ""),
    ],
)
def test_filter_sb_hc_query(query, expected):
    assert p.filter_sb_hc_query(query) == expected


def test_hc_url_keeps_app_query_first_and_encodes_token():
    url = p.hc_url("wss://127.0.0.1:9", "orders/eu", p.ACTION_LISTEN, id="abc", token="a b&c", app_query="x=1")
    assert url == "wss://127.0.0.1:9/$hc/orders/eu?x=1&sb-hc-action=listen&sb-hc-id=abc&sb-hc-token=a%20b%26c"


def test_reject_round_trip_both_spellings():
    url = p.reject_url("wss://h/$hc/x?sb-hc-action=accept&sb-hc-id=1", 418, "I am a teapot")
    params = p.query_params(url.split("?", 1)[1])
    assert p.reject_params(params) == (418, "I am a teapot")
    assert p.reject_params({"statusCode": "400", "statusDescription": "no"}) == (400, "no")
    assert p.reject_params({"sb-hc-id": "1"}) is None


def test_longest_prefix_entity_match():
    names = {"orders", "orders/eu"}
    assert p.split_entity_path("/orders/eu/a/b", names) == ("orders/eu", "/a/b")
    assert p.split_entity_path("Orders/x", names) == ("orders", "/x")
    assert p.split_entity_path("billing", names) is None


def test_service_reason_is_one_line_with_tracking_id():
    reason = p.service_reason(p.MSG_NO_LISTENERS + "\n", "sb://ns/orders", "abc_G1")
    assert "\n" not in reason and p.tracking_id_from_reason(reason) == "abc_G1"


def test_fold_headers_joins_repeats():
    assert p.fold_headers([("A", "1"), ("a", "2"), ("B", "3")]) == {"A": "1, 2", "B": "3"}


def test_hostile_control_messages_raise_protocol_error():
    with pytest.raises(p.ProtocolError, match="nested too deeply"):
        p.decode_command("[" * 100_000 + "]" * 100_000)
    with pytest.raises(p.ProtocolError, match="requestTarget"):
        p.decode_command('{"request": {"address": "a", "id": "1", "method": "GET", "requestTarget": 5}}')
    assert isinstance(p.decode_command('{"somethingNew": {}}'), p.UnknownCommand)
