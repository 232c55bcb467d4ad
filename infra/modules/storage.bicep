// Storage for the Functions host, Durable Functions (task hub queues, tables, blobs), the bridge's queues and the
// claim-check container. The app reaches it with its managed identity (app-roles.bicep).
param name string
param location string
param tags object
param skuName string

@description('False on Flex Consumption; true only where an Azure Files content share needs a key (Elastic Premium).')
param allowSharedKeyAccess bool

@description('Queues to create: relay-outbound, relay-outbound-poison, relay-inbound and the routed queues.')
param queueNames array

param claimCheckContainerName string
param claimCheckRetentionDays int

@description('Flex Consumption deployment container; empty for none.')
param deploymentContainerName string

@description('Elastic Premium content share (Azure Files); empty for none.')
param contentShareName string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
        }
        file: {
          enabled: true
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource claimCheckContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: claimCheckContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = if (!empty(deploymentContainerName)) {
  parent: blobService
  name: empty(deploymentContainerName) ? 'unused' : deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = if (!empty(contentShareName)) {
  parent: account
  name: 'default'
}

// Created up front so the Elastic Premium app finds its content share on first start.
resource contentShare 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = if (!empty(contentShareName)) {
  parent: fileService
  name: empty(contentShareName) ? 'unused' : contentShareName
  properties: {
    shareQuota: 100
  }
}

// Claim-check blobs are read once by the consumer; delete leftovers after the queue message TTL.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-claim-check-blobs'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${claimCheckContainerName}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: claimCheckRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

output name string = account.name
output id string = account.id
// Service URIs without a trailing slash, as the identity-based connection settings expect.
output blobServiceUri string = 'https://${account.name}.blob.${environment().suffixes.storage}'
output queueServiceUri string = 'https://${account.name}.queue.${environment().suffixes.storage}'
