# This deployment's identity, with only what its VM needs: its own subscription, its own login secret.

resource "google_service_account" "consumer" {
  account_id   = local.vm_name
  display_name = "IB intent consumer ${var.name} (VM running IB Gateway + consumer)"
}

locals {
  member = "serviceAccount:${google_service_account.consumer.email}"
}

# Pull its own subscription only.
resource "google_pubsub_subscription_iam_member" "consumer_subscribes" {
  subscription = google_pubsub_subscription.intents.id
  role         = "roles/pubsub.subscriber"
  member       = local.member
}

# Publish replies and dead letters of its own (messages it rejects for good).
resource "google_pubsub_topic_iam_member" "consumer_publishes" {
  for_each = toset(["intent-replies", "intents-dead-letter"])
  topic    = var.topic_ids[each.value]
  role     = "roles/pubsub.publisher"
  member   = local.member
}

# Firestore: IAM has no finer grant than the project (no per-document or per-collection roles), so every deployment
# can read and write every account's documents. What keeps a deployment to its own books is the consumer (paths keyed
# by its IB_ACCOUNTS) and, for money, the live guard in its environment (ALLOW_LIVE, LEVERAGE_CAP_MAX: docs/deployment.md).
resource "google_project_iam_member" "consumer_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.member
}

# Read its own IB login secret, and no other: a secret-level grant, never a project-level secretAccessor.
resource "google_secret_manager_secret_iam_member" "consumer_reads_login" {
  secret_id = google_secret_manager_secret.ib_credentials.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.member
}

# Write logs and metrics.
resource "google_project_iam_member" "consumer_telemetry" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter"])
  project  = var.project_id
  role     = each.value
  member   = local.member
}

# Pull the image from the shared repository only.
resource "google_artifact_registry_repository_iam_member" "consumer_pulls" {
  location   = var.registry.location
  repository = var.registry.name
  role       = "roles/artifactregistry.reader"
  member     = local.member
}
