"""SAS token building and verification, in both the .NET and the Node `sr` forms."""

import base64
import hashlib
import hmac
import json
from urllib.parse import quote

import pytest

from relay import sas


def test_generated_token_verifies_and_hides_signature():
    token = sas.generate_sas_token("http://contoso.servicebus.windows.net/orders/", "rule", "k3y", now=1000, ttl=60)
    parsed = sas.parse_sas_token(token)
    assert parsed.expiry == 1060 and parsed.key_name == "rule"
    assert sas.verify_sas_signature(parsed, "k3y") and not sas.verify_sas_signature(parsed, "other")
    assert parsed.signature not in repr(parsed)


def test_node_form_with_port_and_unencoded_plus_verifies():
    # Node's createRelayToken keeps the port and encodes with encodeURIComponent.
    sr = quote("http://127.0.0.1:8443/orders", safe="")
    sig = base64.b64encode(hmac.new(b"key", f"{sr}\n99".encode(), hashlib.sha256).digest()).decode()
    token = f"SharedAccessSignature sr={sr}&sig={sig}&se=99&skn=rule"  # '+' left raw on purpose
    parsed = sas.parse_sas_token(token)
    assert sas.verify_sas_signature(parsed, "key")
    assert sas.resource_covers(parsed.resource, "orders")
    assert not sas.resource_covers(parsed.resource, "ordersx")


@pytest.mark.parametrize(
    "resource, entity, covered",
    [
        ("http://ns.servicebus.windows.net/", "orders", True),
        ("sb://ns/orders/", "orders", True),
        ("https://NS:443/Orders", "orders/eu", True),
        ("http://ns/orders/eu", "orders", False),
    ],
)
def test_resource_prefix_rules(resource, entity, covered):
    assert sas.resource_covers(resource, entity) is covered


def test_dotnet_audience_form():
    assert sas.sas_resource_uri("sb://Contoso.servicebus.windows.net:443/$hc/orders") == (
        "http://contoso.servicebus.windows.net/orders/"
    )


def test_parse_errors_name_the_missing_field():
    with pytest.raises(ValueError, match="skn"):
        sas.parse_sas_token("SharedAccessSignature sr=a&sig=b&se=1")


def test_token_expiry_reads_sas_and_jwt():
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1234}).encode()).decode().rstrip("=")
    assert sas.token_expiry(f"h.{payload}.s") == 1234
    assert sas.token_expiry(sas.generate_sas_token("http://x/", "r", "k", now=0, ttl=5)) == 5
    assert sas.token_expiry("garbage") is None
