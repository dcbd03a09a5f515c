// Mailroom on Azure: Function App (Flex Consumption, Python 3.11), its Storage account (tables,
// queues, the delivery-logs and templates blob containers), Application Insights and a Key Vault for secrets.
//
// App settings are the Values of ../local.settings.json.example, by the same names, so the two can
// never drift: a few are overridden for Azure (schedules, public URL, App Insights) and the secrets
// become Key Vault references. Deploy: see the README's "Deploying to Azure".

targetScope = 'resourceGroup'

@description('Short name used in every resource name (lower-case letters and digits).')
@minLength(3)
@maxLength(11)
param name string = 'mailroom'

param location string = resourceGroup().location

@secure()
@description('MAILROOM_ADMIN_KEY: the bootstrap operator key.')
param adminKey string

@secure()
@description('MAILROOM_SIGNING_KEY: HMAC key of unsubscribe tokens.')
param signingKey string

@secure()
@description('SENDGRID_API_KEY (mail.send scope).')
param sendgridApiKey string

@secure()
@description('SMTP_PASSWORD, when EMAIL_PROVIDER=smtp.')
param smtpPassword string = ''

@secure()
@description('ACS_CONNECTION_STRING, when Azure Communication Services sends.')
param acsConnectionString string = ''

@description('Most instances Flex Consumption may scale the app out to.')
param maximumInstanceCount int = 100

var suffix = uniqueString(resourceGroup().id, name)
var storageName = take('${name}${suffix}', 24)
var appName = '${name}-${suffix}'
var vaultName = take('${name}kv${suffix}', 24)
var deploymentContainer = 'app-package'
var local = loadJsonContent('../local.settings.json.example').Values

// Names as in core/storage.py (tables PascalCase, queues kebab-case with -poison twins); a unit test
// (tests/unit/test_infra.py) fails when they drift. The app also creates any missing one on first use.
var tables = ['Tenants', 'ApiKeys', 'Contacts0', 'Contacts1', 'Contacts2', 'Contacts3', 'Contacts4', 'Contacts5', 'Contacts6', 'Contacts7', 'Contacts8', 'Contacts9', 'ContactsA', 'ContactsB', 'ContactsC', 'ContactsD', 'ContactsE', 'ContactsF', 'Suppressions', 'Campaigns', 'Schedule', 'Jobs', 'ActiveJobs', 'Tasks', 'Deliveries', 'DeliveryEvents', 'ProviderHealth', 'ContactHistory', 'MessageIndex', 'RateLimits', 'IdempotencyKeys', 'SupportAudit', 'Recounts', 'Reconciles', 'Erasures', 'Reputation', 'Compliance', 'Pacing', 'Warmup']
var queues = ['job-queue', 'task-queue', 'events-queue', 'job-queue-poison', 'task-queue-poison', 'events-queue-poison']

// -- storage --------------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageName
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deliveryLogs 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'delivery-logs'
}

resource templates 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'templates'
}

resource packages 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tableResources 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tables: {
  parent: tableService
  name: table
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queueResources 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queue in queues: {
  parent: queueService
  name: queue
}]

// -- monitoring -----------------------------------------------------------------------------------

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${name}-logs-${suffix}'
  location: location
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${name}-insights-${suffix}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
  }
}

// -- secrets --------------------------------------------------------------------------------------

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: vaultName
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
  }
}

var secrets = {
  AzureWebJobsStorage: 'DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${storage.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}'
  MAILROOM_ADMIN_KEY: adminKey
  MAILROOM_SIGNING_KEY: signingKey
  SENDGRID_API_KEY: sendgridApiKey
  SMTP_PASSWORD: smtpPassword
  ACS_CONNECTION_STRING: acsConnectionString
}

// An optional secret left empty stays an empty app setting, as in local.settings.json.example.
var givenSecrets = filter(items(secrets), s => !empty(s.value))

resource secretResources 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [for secret in givenSecrets: {
  parent: vault
  name: replace(secret.key, '_', '-')
  properties: { value: secret.value }
}]

// -- the Function App -----------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${name}-plan-${suffix}'
  location: location
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

var azureValues = {
  MAILROOM_PUBLIC_URL: 'https://${appName}.azurewebsites.net'
  SENDGRID_API_URL: 'https://api.sendgrid.com'
  CAMPAIGN_MANAGER_SCHEDULE: '0 */1 * * * *'
  STATUS_MANAGER_SCHEDULE: '0 */1 * * * *'
  APPLICATIONINSIGHTS_CONNECTION_STRING: insights.properties.ConnectionString
  MAILROOM_TELEMETRY_CONSOLE: 'false'
}
var secretValues = toObject(givenSecrets, s => s.key, s => '@Microsoft.KeyVault(VaultName=${vault.name};SecretName=${replace(s.key, '_', '-')})')
// Flex Consumption sets the language in functionAppConfig.runtime and refuses FUNCTIONS_WORKER_RUNTIME.
var appValues = union(local, azureValues, secretValues)
var appSettings = map(filter(items(appValues), s => s.key != 'FUNCTIONS_WORKER_RUNTIME'), s => { name: s.key, value: string(s.value) })

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  kind: 'functionapp,linux'
  identity: { type: 'SystemAssigned' }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: 'SystemAssigned'
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: { type: 'SystemAssignedIdentity' }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: { name: 'python', version: '3.11' }
    }
    siteConfig: {
      appSettings: appSettings
      minTlsVersion: '1.2'
    }
  }
  dependsOn: [secretResources, packages]
}

// The app reads its secrets and its deployment package with its own identity.
var keyVaultSecretsUser = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '4633458b-17de-408a-b874-0445c86b69e6')
var storageBlobDataOwner = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')

resource vaultAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, app.id, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: keyVaultSecretsUser
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource packageAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, app.id, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: storageBlobDataOwner
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output functionAppName string = app.name
output apiUrl string = 'https://${app.properties.defaultHostName}/api/v1'
output consoleUrl string = 'https://${app.properties.defaultHostName}/api/console'
output storageAccountName string = storage.name
output applicationInsightsName string = insights.name
output keyVaultName string = vault.name
