// Azure Relay bridge: Functions app (Python 3.11, v2 model, Durable) + Relay Hybrid Connections + Storage + monitoring.
//
// Least privilege, no shared keys:
// - the app authenticates everywhere with its managed identity (system-assigned by default, user-assigned on request);
// - Relay roles are assigned per hybrid connection (Sender on outbound ones, Listener on inbound ones), never on the
//   namespace; hybrid connections require client authorization and carry no SAS authorization rules;
// - storage is reached with identity-based connections; shared-key access is disabled except on Elastic Premium, whose
//   Azure Files content share still needs a key (see premiumContentShareSettings below, the only key in this template).
// App setting names are the ones in README.md (Configuration reference) (tests/infra/test_settings_names.py keeps them in sync).
// Deploy with `azd up` or `az deployment group create` (docs/deploy.md).
targetScope = 'resourceGroup'

@minLength(1)
@maxLength(64)
@description('azd environment name; seeds the unique resource names and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region of every resource (Flex Consumption is not offered in every region: az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@allowed([
  'FlexConsumption'
  'ElasticPremium'
])
@description('Hosting plan: FlexConsumption (FC1, default, no shared keys at all) or ElasticPremium (EP1, needs a key-based Azure Files content share).')
param planType string = 'FlexConsumption'

@allowed([
  'SystemAssigned'
  'UserAssigned'
])
@description('Managed identity of the function app. UserAssigned creates an identity and fills in the *__clientId settings.')
param identityType string = 'SystemAssigned'

@minLength(1)
@description('Hybrid connections the app sends to (on-premises listeners). The app gets Azure Relay Sender on each one.')
param relayOutboundConnections array = [
  'outbound'
]

@description('Hybrid connections the app listens on (on-premises senders). The app gets Azure Relay Listener on each one.')
param relayInboundConnections array = [
  'inbound'
]

@description('RELAY_DEFAULT_CONNECTION; empty means the first outbound hybrid connection.')
param relayDefaultConnection string = ''

@description('Name of an existing Relay namespace to use instead of creating one; the hybrid connections above are created in it (idempotent PUT).')
param existingRelayNamespaceName string = ''

@description('Resource group of existingRelayNamespaceName; empty means this resource group.')
param existingRelayNamespaceResourceGroup string = ''

@description('INBOUND_ROUTES: routing rules for received messages (path prefix or header to queue), serialized to JSON.')
param inboundRoutes array = []

@description('Extra queues that inboundRoutes deliver to; created next to the fixed relay-* queues.')
param routedQueueNames array = []

@minValue(30)
@maxValue(540)
@description('LISTENER_WINDOW_SECONDS: one listener activity window; it must end inside the 10-minute grace of a platform update (and below functionTimeout).')
param listenerWindowSeconds int = 300

@minValue(1)
@maxValue(25)
@description('RELAY_LISTENERS_PER_CONNECTION: listener orchestrations per inbound connection (2 rides out the crash or recycle of one window).')
param listenersPerConnection int = 1

@minValue(1024)
@maxValue(268435456)
@description('INBOUND_MAX_BODY_BYTES: largest request body (and WebSocket message) a listener window stores; larger ones get 413 (WebSocket: close 1009).')
param inboundMaxBodyBytes int = 16777216

@minValue(1)
@maxValue(1000)
@description('INBOUND_MAX_CONCURRENT_REQUESTS: HTTP requests in flight per listener window; more get 503 with Retry-After.')
param inboundMaxConcurrentRequests int = 16

@minValue(0)
@maxValue(10000)
@description('INBOUND_MAX_WS_STREAMS: WebSocket senders served at once per listener window; more are refused at accept with 503.')
param inboundMaxWsStreams int = 100

@minValue(1)
@maxValue(3600)
@description('INBOUND_WS_IDLE_SECONDS: a WebSocket stream that sends nothing this long is closed with 1001.')
param inboundWsIdleSeconds int = 120

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_LRS'

@minValue(1)
@description('Days after which claim-check blobs are deleted by the lifecycle policy (queue messages live 7 days by default).')
param claimCheckRetentionDays int = 7

@minValue(40)
@maxValue(1000)
@description('Flex Consumption: maximum instance count.')
param flexMaximumInstanceCount int = 40

@minValue(0)
@maxValue(10)
@description('Flex Consumption: always-ready instances of the durable group (orchestrations and the listener windows). 1 keeps the Durable queues polled and the next window starting without a cold start; 0 saves its cost but lets scale-in and cold starts open listener gaps.')
param flexAlwaysReadyDurable int = 1

@minValue(1)
@maxValue(1000)
@description('Flex Consumption: concurrent HTTP invocations per instance. relay_send is async and mostly waits on Relay (up to 70 s); the Python default of 1 gives every waiting caller its own instance (40 max). Measured locally: 16 concurrent sends to a listener answering in 1 s finish in 1.5 s in one worker process, about 10 ms CPU each, +14 MB; 16 x 8 MiB (4 MiB body each way) stays far below the instance memory. See docs/deploy.md.')
param flexHttpPerInstanceConcurrency int = 16

@allowed([
  512
  2048
  4096
])
@description('Flex Consumption: instance memory size in MB.')
param flexInstanceMemoryMB int = 2048

@minValue(1)
@maxValue(100)
@description('Elastic Premium: maximum number of elastic workers.')
param premiumMaximumElasticWorkerCount int = 20

@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

// ---------------------------------------------------------------------------------------------------------------------
// Names and fixed values
// ---------------------------------------------------------------------------------------------------------------------
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = {
  'azd-env-name': environmentName
}
var isFlex = planType == 'FlexConsumption'
var isUserAssigned = identityType == 'UserAssigned'

var functionAppName = 'func-${resourceToken}'
var storageAccountName = 'st${resourceToken}'
var useExistingRelay = !empty(existingRelayNamespaceName)
var relayNamespaceName = useExistingRelay ? existingRelayNamespaceName : 'relay-${resourceToken}'
var relayResourceGroupName = useExistingRelay && !empty(existingRelayNamespaceResourceGroup) ? existingRelayNamespaceResourceGroup : resourceGroup().name

// Fixed names shared with the app (README.md (Configuration reference)).
var outboundQueueName = 'relay-outbound'
var outboundPoisonQueueName = 'relay-outbound-poison'
// The app's own failure records (JSON with the reason), apart from the host's raw poison moves.
var outboundFailedQueueName = 'relay-outbound-failed'
var inboundDefaultQueueName = 'relay-inbound'
var claimCheckContainerName = 'relay-claimcheck'
// Flex Consumption deploys the app package from this blob container (identity-based, no key).
var deploymentContainerName = 'app-package'
// Elastic Premium content share (Azure Files), at most 63 lowercase characters.
var contentShareName = take(functionAppName, 63)

// ---------------------------------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------------------------------
resource userAssignedIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (isUserAssigned) {
  name: 'id-${resourceToken}'
  location: location
  tags: tags
}

// Empty for the system-assigned identity: the app then asks for tokens without a client id.
var identityClientId = isUserAssigned ? userAssignedIdentity.properties.clientId : ''

// ---------------------------------------------------------------------------------------------------------------------
// Monitoring, storage, relay
// ---------------------------------------------------------------------------------------------------------------------
module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring-${resourceToken}'
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage-${resourceToken}'
  params: {
    name: storageAccountName
    location: location
    tags: tags
    skuName: storageSku
    // Flex Consumption needs no key anywhere. Elastic Premium mounts its content share from Azure Files, which the
    // platform only supports with a key-based connection string (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING), so shared
    // key access has to stay enabled there; the app itself still uses its identity for blobs, queues and tables.
    allowSharedKeyAccess: !isFlex
    queueNames: union([
      outboundQueueName
      outboundPoisonQueueName
      outboundFailedQueueName
      inboundDefaultQueueName
    ], routedQueueNames)
    claimCheckContainerName: claimCheckContainerName
    claimCheckRetentionDays: claimCheckRetentionDays
    deploymentContainerName: isFlex ? deploymentContainerName : ''
    contentShareName: isFlex ? '' : contentShareName
  }
}

module relay 'modules/relay.bicep' = {
  name: 'relay-${resourceToken}'
  scope: resourceGroup(relayResourceGroupName)
  params: {
    namespaceName: relayNamespaceName
    createNamespace: !useExistingRelay
    location: location
    tags: tags
    hybridConnectionNames: union(relayOutboundConnections, relayInboundConnections)
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Function app
// ---------------------------------------------------------------------------------------------------------------------
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${resourceToken}'
  location: location
  tags: tags
  kind: isFlex ? 'functionapp' : 'elastic'
  sku: isFlex ? {
    name: 'FC1'
    tier: 'FlexConsumption'
  } : {
    name: 'EP1'
    tier: 'ElasticPremium'
  }
  properties: {
    reserved: true // Linux
    maximumElasticWorkerCount: isFlex ? null : premiumMaximumElasticWorkerCount
  }
}

// Storage account of the app, looked up for endpoint names and (Elastic Premium only) the content share key.
resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

// App settings: names from README.md (Configuration reference), all identity-based. Arrays of { name, value } for siteConfig.appSettings,
// so the settings exist when the site is created (Elastic Premium creates its content share from them).
var relaySettings = [
  {
    name: 'RELAY_NAMESPACE'
    value: relay.outputs.hostName
  }
  {
    name: 'RELAY_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'RELAY_OUTBOUND_CONNECTIONS'
    value: join(relayOutboundConnections, ',')
  }
  {
    name: 'RELAY_DEFAULT_CONNECTION'
    value: empty(relayDefaultConnection) ? first(relayOutboundConnections) : relayDefaultConnection
  }
  {
    name: 'RELAY_INBOUND_CONNECTIONS'
    value: join(relayInboundConnections, ',')
  }
  {
    name: 'INBOUND_ROUTES'
    value: string(inboundRoutes)
  }
  {
    name: 'INBOUND_DEFAULT_QUEUE'
    value: inboundDefaultQueueName
  }
  {
    name: 'CLAIM_CHECK_CONTAINER'
    value: claimCheckContainerName
  }
  {
    name: 'LISTENER_WINDOW_SECONDS'
    value: string(listenerWindowSeconds)
  }
  {
    name: 'RELAY_LISTENERS_PER_CONNECTION'
    value: string(listenersPerConnection)
  }
  {
    name: 'INBOUND_MAX_BODY_BYTES'
    value: string(inboundMaxBodyBytes)
  }
  {
    name: 'INBOUND_MAX_CONCURRENT_REQUESTS'
    value: string(inboundMaxConcurrentRequests)
  }
  {
    name: 'INBOUND_MAX_WS_STREAMS'
    value: string(inboundMaxWsStreams)
  }
  {
    name: 'INBOUND_WS_IDLE_SECONDS'
    value: string(inboundWsIdleSeconds)
  }
]

var storageSettings = [
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storage.outputs.name
  }
  {
    name: 'BridgeStorage__queueServiceUri'
    value: storage.outputs.queueServiceUri
  }
  {
    name: 'BridgeStorage__blobServiceUri'
    value: storage.outputs.blobServiceUri
  }
]

// A user-assigned identity must be named explicitly; the system-assigned one is the default of every connection.
var userAssignedIdentitySettings = isUserAssigned ? [
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  {
    name: 'BridgeStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'BridgeStorage__clientId'
    value: identityClientId
  }
] : []

var monitoringSettings = [
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: monitoring.outputs.connectionString
  }
  {
    // Entra ID ingestion (the component has local auth disabled); the identity holds Monitoring Metrics Publisher.
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: isUserAssigned ? 'ClientId=${identityClientId};Authorization=AAD' : 'Authorization=AAD'
  }
]

// Flex Consumption takes the runtime from functionAppConfig and rejects these settings; Elastic Premium needs them
// (plus a remote build of requirements.txt during zip deployment).
var premiumRuntimeSettings = isFlex ? [] : [
  {
    name: 'FUNCTIONS_EXTENSION_VERSION'
    value: '~4'
  }
  {
    name: 'FUNCTIONS_WORKER_RUNTIME'
    value: 'python'
  }
  {
    name: 'SCM_DO_BUILD_DURING_DEPLOYMENT'
    value: 'true'
  }
  {
    name: 'ENABLE_ORYX_BUILD'
    value: 'true'
  }
]

// THE ONLY KEY IN THIS TEMPLATE. Elastic Premium runs from an Azure Files content share, and the platform mounts it
// only with a key-based connection string (identity-based connections are not supported for it). Nothing else reads
// this setting; the app's own storage access is identity-based. Flex Consumption does not get it at all.
var premiumContentShareSettings = isFlex ? [] : [
  {
    name: 'WEBSITE_CONTENTAZUREFILECONNECTIONSTRING'
    value: 'DefaultEndpointsProtocol=https;AccountName=${storageAccount.name};EndpointSuffix=${environment().suffixes.storage};AccountKey=${storageAccount.listKeys().keys[0].value}'
  }
  {
    name: 'WEBSITE_CONTENTSHARE'
    value: contentShareName
  }
]

var appSettings = concat(relaySettings, storageSettings, userAssignedIdentitySettings, monitoringSettings, premiumRuntimeSettings, premiumContentShareSettings)

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: union(tags, {
    'azd-service-name': 'bridge'
  })
  kind: 'functionapp,linux'
  identity: {
    type: identityType
    userAssignedIdentities: isUserAssigned ? {
      '${userAssignedIdentity.id}': {}
    } : null
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      linuxFxVersion: isFlex ? null : 'Python|3.11'
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: appSettings
    }
    functionAppConfig: isFlex ? {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.outputs.blobServiceUri}/${deploymentContainerName}'
          authentication: isUserAssigned ? {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: userAssignedIdentity.id
          } : {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: flexMaximumInstanceCount
        instanceMemoryMB: flexInstanceMemoryMB
        alwaysReady: flexAlwaysReadyDurable > 0 ? [
          {
            name: 'durable'
            instanceCount: flexAlwaysReadyDurable
          }
        ] : []
        triggers: {
          http: {
            perInstanceConcurrency: flexHttpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    } : null
  }
}

// Top-level children (parent:) rather than nested ones: offline parsers (pycep, checkov) keep only one nested child.
// No publishing user names or passwords: azd and the az CLI deploy with an Entra ID token.
resource ftpPublishingCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishingCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

var principalId = isUserAssigned ? userAssignedIdentity.properties.principalId : functionApp.identity.principalId

// ---------------------------------------------------------------------------------------------------------------------
// Role assignments (narrowest scopes; see the modules)
// ---------------------------------------------------------------------------------------------------------------------
module appRoles 'modules/app-roles.bicep' = {
  name: 'app-roles-${resourceToken}'
  params: {
    principalId: principalId
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.name
  }
}

module relayRoles 'modules/relay-roles.bicep' = {
  name: 'relay-roles-${resourceToken}'
  scope: resourceGroup(relayResourceGroupName)
  params: {
    principalId: principalId
    namespaceName: relay.outputs.name
    senderConnections: relayOutboundConnections
    listenerConnections: relayInboundConnections
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Outputs (azd stores them in .azure/<env>/.env)
// ---------------------------------------------------------------------------------------------------------------------
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_APP_NAME string = functionApp.name
output AZURE_FUNCTION_APP_URL string = 'https://${functionApp.properties.defaultHostName}'
output AZURE_FUNCTION_PRINCIPAL_ID string = principalId
output AZURE_FUNCTION_CLIENT_ID string = identityClientId
output AZURE_RELAY_NAMESPACE_NAME string = relay.outputs.name
output AZURE_RELAY_NAMESPACE_HOST string = relay.outputs.hostName
output AZURE_RELAY_RESOURCE_GROUP string = relayResourceGroupName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_APPLICATION_INSIGHTS_NAME string = monitoring.outputs.name
