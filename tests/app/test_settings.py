"""Settings validation: a missing or malformed setting names itself and says what to set."""

from __future__ import annotations

import json

import pytest

from bridge.settings import SETTING_NAMES, SettingsError, load_settings

BASE = {
    "RELAY_NAMESPACE": "contoso.servicebus.windows.net",
    "RELAY_OUTBOUND_CONNECTIONS": "orders, billing ,orders/eu",
    "BridgeStorage": "UseDevelopmentStorage=true",
}


def load(**changes):
    env = {**BASE, **changes}
    return load_settings({k: v for k, v in env.items() if v is not None})


def test_minimal_settings_and_defaults():
    s = load()
    assert s.outbound_connections == ("orders", "billing", "orders/eu")
    assert s.default_connection == "orders" and s.inbound_connections == ()
    assert (s.inbound_default_queue, s.claim_check_container, s.listener_window_seconds) == ("relay-inbound", "relay-claimcheck", 300)
    assert s.relay_client_id is None and s.connection_verify is True
    assert s.relay_address("orders/eu") == "sb://contoso.servicebus.windows.net/orders/eu"
    with pytest.raises(AttributeError):
        s.relay_namespace = "x"  # frozen
    assert "UseDevelopmentStorage" not in repr(s.storage)


@pytest.mark.parametrize(
    "changes, setting, words",
    [
        ({"RELAY_NAMESPACE": None}, "RELAY_NAMESPACE", "is missing; set it to the Relay namespace host"),
        ({"RELAY_NAMESPACE": "sb://contoso.servicebus.windows.net/"}, "RELAY_NAMESPACE", "without 'sb://'"),
        ({"RELAY_OUTBOUND_CONNECTIONS": " , "}, "RELAY_OUTBOUND_CONNECTIONS", "comma-separated list"),
        ({"RELAY_OUTBOUND_CONNECTIONS": "bad name!"}, "RELAY_OUTBOUND_CONNECTIONS", "not a valid hybrid connection name"),
        ({"RELAY_DEFAULT_CONNECTION": "payments"}, "RELAY_DEFAULT_CONNECTION", "is not in RELAY_OUTBOUND_CONNECTIONS"),
        ({"RELAY_CLIENT_ID": "my-identity"}, "RELAY_CLIENT_ID", "is not a client id"),
        ({"RELAY_CA_FILE": "/nope/ca.pem"}, "RELAY_CA_FILE", "does not exist"),
        ({"INBOUND_ROUTES": "[{"}, "INBOUND_ROUTES", "is not valid JSON"),
        ({"INBOUND_ROUTES": '{"queue": "a"}'}, "INBOUND_ROUTES", "must be a JSON list"),
        ({"INBOUND_ROUTES": '[{"pathPrefix": "/a"}]'}, "INBOUND_ROUTES", "rule 0 needs a \"queue\""),
        ({"INBOUND_ROUTES": '[{"pathPrefix": "/a", "header": "X", "queue": "qq-a"}]'}, "INBOUND_ROUTES", "exactly one of"),
        ({"INBOUND_ROUTES": '[{"pathPrefix": "/a", "queue": "Bad_Queue"}]'}, "INBOUND_ROUTES", "not a valid queue name"),
        ({"INBOUND_ROUTES": '[{"path": "/a", "queue": "abc"}]'}, "INBOUND_ROUTES", "unknown key 'path'"),
        ({"INBOUND_DEFAULT_QUEUE": "x"}, "INBOUND_DEFAULT_QUEUE", "not a valid queue name"),
        ({"CLAIM_CHECK_CONTAINER": "Claims"}, "CLAIM_CHECK_CONTAINER", "not a valid blob container name"),
        ({"LISTENER_WINDOW_SECONDS": "5m"}, "LISTENER_WINDOW_SECONDS", "not a whole number"),
        ({"LISTENER_WINDOW_SECONDS": "3600"}, "LISTENER_WINDOW_SECONDS", "below host.json functionTimeout"),
        ({"BridgeStorage": None}, "BridgeStorage", "UseDevelopmentStorage=true"),
        ({"BridgeStorage": None, "BridgeStorage__queueServiceUri": "https://a.queue.core.windows.net"},
         "BridgeStorage__blobServiceUri", "is missing"),
        ({"BridgeStorage": None, "BridgeStorage__queueServiceUri": "http://a", "BridgeStorage__blobServiceUri": "https://b"},
         "BridgeStorage__queueServiceUri", "https://"),
        ({"BridgeStorage": None, "BridgeStorage__queueServiceUri": "https://a", "BridgeStorage__blobServiceUri": "https://b",
          "BridgeStorage__credential": "secret"}, "BridgeStorage__credential", "'managedidentity'"),
    ],
)
def test_bad_settings_name_the_setting_and_the_fix(changes, setting, words):
    with pytest.raises(SettingsError) as caught:
        load(**changes)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"app setting {setting}:")
    assert words in str(caught.value)


def test_identity_based_storage():
    s = load(BridgeStorage=None, BridgeStorage__queueServiceUri="https://acct.queue.core.windows.net/",
             BridgeStorage__blobServiceUri="https://acct.blob.core.windows.net", BridgeStorage__credential="managedidentity",
             BridgeStorage__clientId="00000000-0000-0000-0000-000000000001")
    assert s.storage.uses_identity and s.storage.queue_service_uri == "https://acct.queue.core.windows.net"
    assert s.storage.client_id == "00000000-0000-0000-0000-000000000001"


def test_routes_parse_in_order():
    routes = [{"pathPrefix": "/orders", "queue": "orders-in"}, {"header": "X-Route", "value": "eu", "queue": "eu-in"},
              {"header": "X-Any", "queue": "any-in", "connection": "inbound"}]
    s = load(INBOUND_ROUTES=json.dumps(routes), RELAY_INBOUND_CONNECTIONS="inbound")
    assert [r.queue for r in s.inbound_routes] == ["orders-in", "eu-in", "any-in"]


def test_setting_names_cover_everything_read():
    import inspect

    import bridge.settings as module

    source = inspect.getsource(module.load_settings) + inspect.getsource(module._storage)
    for constant in ("RELAY_NAMESPACE", "RELAY_OUTBOUND_CONNECTIONS", "STORAGE_CLIENT_ID", "LISTENER_WINDOW_SECONDS"):
        assert constant in source or constant in inspect.getsource(module)
    assert len(SETTING_NAMES) == len(set(SETTING_NAMES)) == 20
