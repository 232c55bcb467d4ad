"""RBAC scope matching and role resolution, without sockets (the emulator's Authorizer on its own)."""

from __future__ import annotations

import copy
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.auth import Authorizer, AuthError, scope_covers
from emulator.config import ROLE_SENDER, load_config
from emulator.identity import TokenIssuer
from tests.fixtures.emulator import TEST_CONFIG, identity

NS = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Relay/namespaces/contoso"


@pytest.mark.parametrize(
    "scope, target, covered",
    [
        ("/", f"{NS}/hybridConnections/orders", True),
        ("/subscriptions/S1", f"{NS}/hybridConnections/orders", True),
        ("/subscriptions/s1/resourcegroups/RG/", f"{NS}/hybridConnections/orders", True),
        ("/subscriptions/s1/resourceGroups/r", f"{NS}/hybridConnections/orders", False),  # not a segment boundary
        (NS.upper(), f"{NS}/hybridConnections/orders", True),
        (f"{NS}/hybridConnections/orders", f"{NS}/hybridConnections/orders", True),
        (f"{NS}/hybridConnections/orders", f"{NS}/hybridConnections/orders/eu", False),  # nested names are separate
        (f"{NS}/hybridConnections/ord", f"{NS}/hybridConnections/orders", False),
        ("/subscriptions/s2", f"{NS}/hybridConnections/orders", False),
    ],
)
def test_scope_covers(scope, target, covered):
    assert scope_covers(scope, target) is covered


@pytest.fixture(scope="module")
def setup():
    cfg_data = copy.deepcopy(TEST_CONFIG)
    sub = cfg_data["subscriptionId"]
    nobody = identity(cfg_data, "nobody")["principalId"]
    # Subscription scope, role given as a full role-definition id.
    cfg_data["roleAssignments"].append({
        "principalId": nobody,
        "role": f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{ROLE_SENDER}",
        "scope": f"/subscriptions/{sub}",
    })
    cfg = load_config(cfg_data)
    issuer = TokenIssuer(cfg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return cfg, issuer, Authorizer(cfg, issuer)


def _token(setup, name: str, resource: str = "https://relay.azure.net", **kw) -> str:
    cfg, issuer, _ = setup
    ident = next(i for i in cfg.identities if i.name == name)
    return issuer.mint(ident, resource, **kw)[0]


def test_subscription_scope_and_role_definition_id(setup):
    _, _, auth = setup
    token = _token(setup, "nobody")
    for entity in ("orders", "public", "orders/eu"):
        assert auth.authorize(token, entity, "Send") > time.time()
    with pytest.raises(AuthError) as info:
        auth.authorize(token, "orders", "Listen")
    assert info.value.status == 403


def test_audience_forms_and_expiry_grace(setup):
    cfg, _, auth = setup
    for aud in ("https://relay.azure.net", "https://relay.azure.net/"):
        auth.authorize(_token(setup, "bridge", aud), "orders", "Listen")
    with pytest.raises(AuthError) as info:
        auth.authorize(_token(setup, "bridge", "https://relay.azure.net/other"), "orders", "Listen")
    assert info.value.status == 401 and "InvalidAudience" in info.value.message
    expired = _token(setup, "bridge", lifetime=1, now=time.time() - 30)  # expired 29 s ago
    with pytest.raises(AuthError) as info:
        auth.authorize(expired, "orders", "Listen")  # strict default: no grace after exp
    assert "ExpiredToken" in info.value.message
    cfg.token_grace_seconds = 60
    auth.authorize(expired, "orders", "Listen")  # tokenGraceSeconds 60: still accepted
    old = _token(setup, "bridge", lifetime=1, now=time.time() - 300)
    with pytest.raises(AuthError) as info:
        auth.authorize(old, "orders", "Listen")
    assert "ExpiredToken" in info.value.message
