// Relay data-plane roles for the app's identity, each scoped to ONE hybrid connection (never the namespace):
// Azure Relay Sender on every outbound hybrid connection, Azure Relay Listener on every inbound one.
// Deployed at the namespace's resource group; the hybrid connections exist already (relay.bicep).
@description('Object id of the function app identity (service principal).')
param principalId string

param namespaceName string

@description('Hybrid connections the app sends to.')
param senderConnections array

@description('Hybrid connections the app listens on.')
param listenerConnections array

// Built-in role definitions (docs: shared functions-notes §6.1 and relay-protocol §7).
var relaySenderRoleId = '26baccc8-eea7-41f1-98f4-1762cc7f685d'
var relayListenerRoleId = '26e0b698-aa6d-4085-9386-aadae190014d'

resource namespace 'Microsoft.Relay/namespaces@2024-01-01' existing = {
  name: namespaceName
}

resource outboundHybridConnections 'Microsoft.Relay/namespaces/hybridConnections@2024-01-01' existing = [for hcName in senderConnections: {
  parent: namespace
  name: hcName
}]

resource inboundHybridConnections 'Microsoft.Relay/namespaces/hybridConnections@2024-01-01' existing = [for hcName in listenerConnections: {
  parent: namespace
  name: hcName
}]

resource senderAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (hcName, i) in senderConnections: {
  scope: outboundHybridConnections[i]
  name: guid(outboundHybridConnections[i].id, principalId, relaySenderRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', relaySenderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Relay bridge: send to hybrid connection ${hcName}'
  }
}]

resource listenerAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (hcName, i) in listenerConnections: {
  scope: inboundHybridConnections[i]
  name: guid(inboundHybridConnections[i].id, principalId, relayListenerRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', relayListenerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Relay bridge: listen on hybrid connection ${hcName}'
  }
}]
