// Log Analytics workspace + workspace-based Application Insights with local (instrumentation key) auth disabled:
// telemetry is accepted only with an Entra ID token (APPLICATIONINSIGHTS_AUTHENTICATION_STRING in the app, and the
// Monitoring Metrics Publisher role from app-roles.bicep).
param location string
param tags object
param logAnalyticsName string
param applicationInsightsName string
param retentionInDays int

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

output name string = applicationInsights.name
// Not a secret: with local auth disabled the instrumentation key alone cannot ingest anything.
output connectionString string = applicationInsights.properties.ConnectionString
