// Secrets come from the environment of whoever deploys (never committed):
//   MAILROOM_ADMIN_KEY, MAILROOM_SIGNING_KEY, SENDGRID_API_KEY
using './main.bicep'

param name = 'mailroom'
param adminKey = readEnvironmentVariable('MAILROOM_ADMIN_KEY')
param signingKey = readEnvironmentVariable('MAILROOM_SIGNING_KEY')
param sendgridApiKey = readEnvironmentVariable('SENDGRID_API_KEY')
