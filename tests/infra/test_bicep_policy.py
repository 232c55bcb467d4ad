"""Least-privilege and hardening rules of infra/, asserted on the parsed Bicep (pycep-parser, offline).

What a reviewer would check by eye: which roles, at which scope; that hybrid connections require a token and carry
no SAS rules; that no key reaches an app setting except the Elastic Premium content share; TLS 1.2; identities.
"""

from __future__ import annotations

import json
import re

from tests.infra import bicep as b

# Built-in role definition GUIDs (shared functions-notes §6.1, relay-protocol §7).
RELAY_SENDER = "26baccc8-eea7-41f1-98f4-1762cc7f685d"
RELAY_LISTENER = "26e0b698-aa6d-4085-9386-aadae190014d"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
# Broad roles that must never appear.
FORBIDDEN_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "2787bf04-f1f5-4bfe-8383-c8a24483ee38": "Azure Relay Owner",
    "17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
}

HYBRID_CONNECTION = "Microsoft.Relay/namespaces/hybridConnections"
ROLE_ASSIGNMENT = "Microsoft.Authorization/roleAssignments"
CONTENT_SHARE_SETTING = "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING"
# Spellings of keys, key-bearing connection strings and SAS in Bicep source.
SECRET_PATTERN = re.compile(
    r"listKeys|listConnectionStrings|listAccountSas|listServiceSas|AccountKey=|SharedAccessKey|SharedAccessSignature"
    r"|primaryKey|secondaryKey|primaryConnectionString|secondaryConnectionString",
    re.IGNORECASE,
)


def _docs():
    return b.parse_all()


def _assignments():
    """(file, symbol, node, scope symbol, scope node, role ids) for every role assignment in infra/."""
    out = []
    for path, doc in _docs().items():
        for name, node in b.resources(doc, ROLE_ASSIGNMENT):
            config = b.body(node)
            assert "scope" in config, f"{path.name}:{name} has no explicit scope (would default to the resource group)"
            scope_path = b.property_path(config["scope"])
            assert scope_path, f"{path.name}:{name}: scope must be a resource symbol"
            scope_symbol = scope_path[0]
            scope_node = doc["resources"].get(scope_symbol)
            assert scope_node is not None, f"{path.name}:{name}: scope {scope_symbol} is not a resource of this file"
            out.append((path, name, node, scope_path, scope_node, b.role_ids(doc, node)))
    return out


def test_no_broad_roles_anywhere():
    for path in b.bicep_files():
        text = path.read_text().lower()
        for guid, role in FORBIDDEN_ROLES.items():
            assert guid not in text, f"{path.name} mentions {role}"


def test_role_assignments_are_deterministic_service_principal_assignments():
    assignments = _assignments()
    assert assignments
    for path, name, node, scope_path, _scope, _ids in assignments:
        config = b.body(node)
        guid_args = b.function_call(config["name"], "guid")
        assert guid_args is not None, f"{path.name}:{name}: name must be guid(scope.id, principalId, roleId)"
        args = list(guid_args.values())
        assert b.property_path(args[0]) == scope_path + ["id"], f"{path.name}:{name}: guid() must start with the scope's id"
        assert args[1] == "principalId"
        role_ref = b.body(node)["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        assert args[2] == role_ref, f"{path.name}:{name}: guid() must end with the role id"
        props = config["properties"]
        assert props["principalId"] == "principalId"
        assert props["principalType"] == "ServicePrincipal"


def test_relay_roles_are_scoped_to_single_hybrid_connections():
    relay_assignments = [a for a in _assignments() if {RELAY_SENDER, RELAY_LISTENER} & set(a[5])]
    assert relay_assignments, "no Azure Relay Sender/Listener assignment found"
    granted = {}
    for path, name, node, scope_path, scope_node, ids in relay_assignments:
        assert scope_node["type"] == HYBRID_CONNECTION, (
            f"{path.name}:{name} assigns a Relay role at {scope_node['type']}; only hybridConnections scope is allowed"
        )
        # One assignment per hybrid connection: the scope is the i-th element of a loop over the same list.
        detail = b.loop(node)
        scope_loop = b.loop(scope_node)
        assert detail and scope_loop, f"{path.name}:{name} must loop over the hybrid connections"
        assert scope_path[1] == f"[{detail['index_name']}]"
        assert scope_loop["array_name"] == detail["array_name"]
        assert len(ids) == 1
        granted[detail["array_name"]] = ids[0]
    assert granted == {"senderConnections": RELAY_SENDER, "listenerConnections": RELAY_LISTENER}

    # main.bicep passes the outbound list as senders and the inbound list as listeners.
    main = b.parse(b.MAIN)
    (call,) = [m for m in main["modules"].values() if m["detail"]["path"] == "modules/relay-roles.bicep"]
    params = b.body(call)["params"]
    assert params["senderConnections"] == "relayOutboundConnections"
    assert params["listenerConnections"] == "relayInboundConnections"


def test_no_role_at_relay_namespace_or_wider():
    for path, name, _node, _scope_path, scope_node, ids in _assignments():
        assert scope_node["type"] != "Microsoft.Relay/namespaces", f"{path.name}:{name} is namespace-scoped"
        assert not scope_node["type"].startswith("Microsoft.Resources/"), f"{path.name}:{name} is group-scoped"


def test_storage_and_monitoring_roles():
    by_scope_type = {}
    for _path, _name, _node, _scope_path, scope_node, ids in _assignments():
        by_scope_type.setdefault(scope_node["type"], set()).update(ids)
    assert by_scope_type["Microsoft.Storage/storageAccounts"] == {
        STORAGE_BLOB_DATA_OWNER,
        STORAGE_QUEUE_DATA_CONTRIBUTOR,
        STORAGE_TABLE_DATA_CONTRIBUTOR,
    }
    assert by_scope_type["Microsoft.Insights/components"] == {MONITORING_METRICS_PUBLISHER}
    assert set(by_scope_type) == {"Microsoft.Storage/storageAccounts", "Microsoft.Insights/components", HYBRID_CONNECTION}


def test_every_hybrid_connection_requires_client_authorization_and_has_no_sas_rules():
    created = 0
    for path, doc in _docs().items():
        for name, node in b.resources(doc):
            assert "authorizationrules" not in node["type"].lower(), f"{path.name}:{name} declares SAS rules"
            if node["type"] == HYBRID_CONNECTION and not node["existing"]:
                created += 1
                assert b.body(node)["properties"]["requiresClientAuthorization"] is True, f"{path.name}:{name}"
        code = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("//")]
        assert not any("authorizationRules" in line for line in code), f"{path.name} uses authorizationRules"
    assert created >= 1


def test_hybrid_connections_cover_outbound_and_inbound_lists():
    relay = b.parse(b.INFRA / "modules" / "relay.bicep")
    (hcs,) = [n for _, n in b.resources(relay, HYBRID_CONNECTION)]
    assert b.loop(hcs)["array_name"] == "hybridConnectionNames"
    main = b.parse(b.MAIN)
    (call,) = [m for m in main["modules"].values() if m["detail"]["path"] == "modules/relay.bicep"]
    union = b.function_call(b.body(call)["params"]["hybridConnectionNames"], "union")
    assert sorted(union.values()) == ["relayInboundConnections", "relayOutboundConnections"]
    (namespace,) = [n for _, n in b.resources(relay, "Microsoft.Relay/namespaces") if not n["existing"]]
    assert b.body(namespace)["sku"] == {"name": "Standard", "tier": "Standard"}


def test_no_key_or_sas_in_any_file_except_the_premium_content_share():
    for path in b.bicep_files():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("//"):
                continue
            if SECRET_PATTERN.search(line):
                assert path == b.MAIN and "AccountKey=${storageAccount.listKeys()" in line, (
                    f"{path.name}:{lineno} uses a key: {line.strip()}"
                )


def test_only_the_content_share_setting_holds_a_key_and_only_on_elastic_premium():
    main = b.parse(b.MAIN)
    settings = b.app_settings(main)
    for name, values in settings.items():
        for value in values:
            if SECRET_PATTERN.search(json.dumps(value)):
                assert name == CONTENT_SHARE_SETTING, f"app setting {name} carries a key"
    assert any(SECRET_PATTERN.search(json.dumps(v)) for v in settings[CONTENT_SHARE_SETTING])
    # Isolated in one variable that is empty on Flex Consumption.
    owner = b.settings_variable_of(main, CONTENT_SHARE_SETTING)
    branches = b.conditional(b.variable_value(main, owner))
    assert branches["condition"] == "isFlex" and branches["true_value"] == []
    assert {item["name"] for item in branches["false_value"]} == {CONTENT_SHARE_SETTING, "WEBSITE_CONTENTSHARE"}
    assert b.variable_value(main, "isFlex") == {
        "operator": {"type": "equals", "operands": {"operand_1": "planType", "operand_2": "FlexConsumption"}}
    }
    # No output exposes anything secret either.
    assert not SECRET_PATTERN.search(json.dumps(main["outputs"]))


def test_storage_account_hardening():
    storage = b.parse(b.INFRA / "modules" / "storage.bicep")
    (account,) = [n for _, n in b.resources(storage, "Microsoft.Storage/storageAccounts") if not n["existing"]]
    config = b.body(account)
    props = config["properties"]
    assert config["kind"] == "StorageV2"
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["allowBlobPublicAccess"] is False
    assert props["defaultToOAuthAuthentication"] is True
    assert props["allowSharedKeyAccess"] == "allowSharedKeyAccess"
    # main.bicep: shared keys only where Elastic Premium needs its content share.
    main = b.parse(b.MAIN)
    (call,) = [m for m in main["modules"].values() if m["detail"]["path"] == "modules/storage.bicep"]
    params = b.body(call)["params"]
    assert params["allowSharedKeyAccess"] == {"operator": {"type": "not", "operands": {"bool_value": "isFlex"}}}
    for _, container in b.resources(storage, "Microsoft.Storage/storageAccounts/blobServices/containers"):
        assert b.body(container)["properties"]["publicAccess"] == "None"


def test_storage_queues_and_containers():
    main = b.parse(b.MAIN)
    (call,) = [m for m in main["modules"].values() if m["detail"]["path"] == "modules/storage.bicep"]
    params = b.body(call)["params"]
    union = b.function_call(params["queueNames"], "union")
    fixed, routed = union["arg_1"], union["arg_2"]
    assert [b.resolve(main, q) for q in fixed] == ["relay-outbound", "relay-outbound-poison", "relay-outbound-failed", "relay-inbound"]
    assert routed == "routedQueueNames"
    assert b.resolve(main, params["claimCheckContainerName"]) == "relay-claimcheck"
    deployment = b.conditional(params["deploymentContainerName"])
    assert deployment["condition"] == "isFlex" and deployment["false_value"] == ""
    storage = b.parse(b.INFRA / "modules" / "storage.bicep")
    (queues,) = [n for _, n in b.resources(storage, "Microsoft.Storage/storageAccounts/queueServices/queues")]
    assert b.loop(queues)["array_name"] == "queueNames"


def test_function_app_identity_runtime_and_tls():
    main = b.parse(b.MAIN)
    params = main["parameters"]
    allowed = {d["type"]: d["argument"] for d in params["identityType"]["decorators"]}["allowed"]
    assert allowed == ["SystemAssigned", "UserAssigned"]
    assert params["identityType"]["default"] == "SystemAssigned"
    plan_allowed = {d["type"]: d["argument"] for d in params["planType"]["decorators"]}["allowed"]
    assert plan_allowed == ["FlexConsumption", "ElasticPremium"]
    assert params["planType"]["default"] == "FlexConsumption"

    (site,) = [n for _, n in b.resources(main, "Microsoft.Web/sites") if not n["existing"]]
    config = b.body(site)
    assert config["kind"] == "functionapp,linux"
    assert config["identity"]["type"] == "identityType"
    props = config["properties"]
    assert props["httpsOnly"] is True
    site_config = props["siteConfig"]
    assert site_config["minTlsVersion"] == "1.2" and site_config["scmMinTlsVersion"] == "1.2"
    assert site_config["ftpsState"] == "Disabled"
    assert b.conditional(site_config["linuxFxVersion"])["false_value"] == "Python|3.11"
    flex = b.conditional(props["functionAppConfig"])
    assert flex["condition"] == "isFlex"
    assert flex["true_value"]["runtime"] == {"name": "python", "version": "3.11"}
    auth = b.conditional(flex["true_value"]["deployment"]["storage"]["authentication"])
    assert auth["true_value"]["type"] == "UserAssignedIdentity" and auth["false_value"]["type"] == "SystemAssignedIdentity"

    (plan,) = [n for _, n in b.resources(main, "Microsoft.Web/serverfarms")]
    sku = b.conditional(b.body(plan)["sku"])
    assert sku["condition"] == "isFlex"
    assert sku["true_value"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert sku["false_value"] == {"name": "EP1", "tier": "ElasticPremium"}
    assert b.body(plan)["properties"]["reserved"] is True

    for _, policy in b.resources(main, "Microsoft.Web/sites/basicPublishingCredentialsPolicies"):
        assert b.body(policy)["properties"]["allow"] is False


def test_user_assigned_identity_fills_in_client_ids():
    main = b.parse(b.MAIN)
    client_id = b.conditional(b.variable_value(main, "identityClientId"))
    assert client_id["condition"] == "isUserAssigned" and client_id["false_value"] == ""
    assert b.property_path(client_id["true_value"]) == ["userAssignedIdentity", "properties", "clientId"]
    assert b.variable_value(main, "isUserAssigned") == {
        "operator": {"type": "equals", "operands": {"operand_1": "identityType", "operand_2": "UserAssigned"}}
    }
    settings = b.app_settings(main)
    assert settings["RELAY_CLIENT_ID"] == ["identityClientId"]
    owner = b.settings_variable_of(main, "BridgeStorage__clientId")
    branches = b.conditional(b.variable_value(main, owner))
    assert branches["condition"] == "isUserAssigned" and branches["false_value"] == []
    assert {i["name"]: i["value"] for i in branches["true_value"]} == {
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": "identityClientId",
        "BridgeStorage__credential": "managedidentity",
        "BridgeStorage__clientId": "identityClientId",
    }
    auth = b.conditional(settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"][0])
    assert auth["true_value"] == "ClientId=${identityClientId};Authorization=AAD"
    assert auth["false_value"] == "Authorization=AAD"


def test_identity_based_storage_and_relay_settings():
    main = b.parse(b.MAIN)
    settings = b.app_settings(main)
    assert b.property_path(settings["AzureWebJobsStorage__accountName"][0]) == ["storage", "outputs", "name"]
    assert b.property_path(settings["BridgeStorage__queueServiceUri"][0]) == ["storage", "outputs", "queueServiceUri"]
    assert b.property_path(settings["BridgeStorage__blobServiceUri"][0]) == ["storage", "outputs", "blobServiceUri"]
    assert b.property_path(settings["RELAY_NAMESPACE"][0]) == ["relay", "outputs", "hostName"]
    relay = b.parse(b.INFRA / "modules" / "relay.bicep")
    assert relay["outputs"]["hostName"]["value"] == "${namespaceName}.servicebus.windows.net"
    join = b.function_call(settings["RELAY_OUTBOUND_CONNECTIONS"][0], "join")
    assert join == {"input_array": "relayOutboundConnections", "delimiter": ","}
    join = b.function_call(settings["RELAY_INBOUND_CONNECTIONS"][0], "join")
    assert join == {"input_array": "relayInboundConnections", "delimiter": ","}
    # No plain AzureWebJobsStorage / BridgeStorage connection string in Azure.
    assert "AzureWebJobsStorage" not in settings and "BridgeStorage" not in settings
    storage = b.parse(b.INFRA / "modules" / "storage.bicep")
    assert storage["outputs"]["queueServiceUri"]["value"] == "https://${account.name}.queue.${environment().suffixes.storage}"


def test_application_insights_uses_entra_ingestion():
    monitoring = b.parse(b.INFRA / "modules" / "monitoring.bicep")
    (component,) = [n for _, n in b.resources(monitoring, "Microsoft.Insights/components")]
    props = b.body(component)["properties"]
    assert props["DisableLocalAuth"] is True
    assert b.property_path(props["WorkspaceResourceId"]) == ["workspace", "id"]


def test_outputs_for_azd():
    outputs = b.parse(b.MAIN)["outputs"]
    for name in ("AZURE_FUNCTION_APP_NAME", "AZURE_RELAY_NAMESPACE_NAME", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_LOCATION"):
        assert name in outputs


def _seconds(timespan: str) -> int:
    hours, minutes, seconds = (int(part) for part in timespan.split(":"))
    return hours * 3600 + minutes * 60 + seconds


def test_listener_window_fits_the_function_timeout():
    """LISTENER_WINDOW_SECONDS (default and maximum) stays below host.json functionTimeout.

    Flex Consumption and Elastic Premium both allow functionTimeout "00:30:00" (default 30 min, maximum unbounded;
    functions-notes §2.5); Consumption (Y1, 10 min maximum) is deliberately not offered by main.bicep.
    """
    main = b.parse(b.MAIN)
    window = main["parameters"]["listenerWindowSeconds"]
    maximum = {d["type"]: d["argument"] for d in window["decorators"]}["max_value"]
    host_json = b.REPO / "host.json"
    timeout = _seconds(json.loads(host_json.read_text())["functionTimeout"]) if host_json.exists() else 1800
    assert window["default"] < maximum < timeout
    assert "Y1" not in b.MAIN.read_text() and "Dynamic" not in b.MAIN.read_text()
