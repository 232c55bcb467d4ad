// Relay namespace (Standard) and its hybrid connections. Every hybrid connection requires client authorization (a
// token for listen and send) and declares no authorizationRules: access is granted with Azure RBAC only
// (relay-roles.bicep), so there are no SAS keys to leak or rotate.
// Deployed at the namespace's resource group, which may differ from the app's (existingRelayNamespaceResourceGroup).
param namespaceName string

@description('False to use an existing namespace (existingRelayNamespaceName): only the hybrid connections are created in it.')
param createNamespace bool

param location string
param tags object

@description('Outbound and inbound hybrid connection names (deduplicated by the caller).')
param hybridConnectionNames array

resource newNamespace 'Microsoft.Relay/namespaces@2024-01-01' = if (createNamespace) {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    publicNetworkAccess: 'Enabled'
  }
}

resource namespace 'Microsoft.Relay/namespaces@2024-01-01' existing = {
  name: namespaceName
}

resource hybridConnections 'Microsoft.Relay/namespaces/hybridConnections@2024-01-01' = [for hcName in hybridConnectionNames: {
  parent: namespace
  name: hcName
  properties: {
    requiresClientAuthorization: true
  }
  dependsOn: [
    newNamespace
  ]
}]

output name string = namespaceName
// Public-cloud Relay suffix (environment() has no Service Bus suffix); this is RELAY_NAMESPACE.
output hostName string = '${namespaceName}.servicebus.windows.net'
