# Two identities per deployment, each with only what its processes need (docs/deployment.md, "What each identity
# can do"):
# - the VM's own account (google_service_account.vm): what the metadata server hands out. The launcher (root in the
#   container) uses it to read the IB login and to mint the consumer's tokens; the VM's agents use it for logs,
#   metrics and the image pull.
# - the consumer's account (google_service_account.workload): Pub/Sub and Firestore, no secret. The consumer never
#   holds the VM's token: the launcher firewalls the metadata server from the consumer's uid and serves it this
#   account's tokens from a metadata proxy on 127.0.0.1 (gateway-image/launcher/metadata_proxy.py).

resource "google_service_account" "vm" {
  account_id   = local.vm_name
  display_name = "IB intent consumer ${var.name} (VM and launcher: IB login, consumer's tokens)"
}

resource "google_service_account" "workload" {
  # A name of its own ("ib-app-KEY": at most 23 characters of the 30 allowed), new for every deployment.
  account_id   = "ib-app-${var.name}"
  display_name = "IB intent consumer ${var.name} (the consumer process: Pub/Sub, Firestore)"
}

locals {
  member    = "serviceAccount:${google_service_account.workload.email}"
  vm_member = "serviceAccount:${google_service_account.vm.email}"
}

# The VM's account (the launcher) mints access tokens for the consumer's account, and for no other account: a grant
# on that service account, never a project-level token creator (which could impersonate any account, the VM's too).
resource "google_service_account_iam_member" "vm_impersonates_consumer" {
  service_account_id = google_service_account.workload.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.vm_member
}

# Pull its own subscription only.
resource "google_pubsub_subscription_iam_member" "consumer_subscribes" {
  subscription = google_pubsub_subscription.intents.id
  role         = "roles/pubsub.subscriber"
  member       = local.member
}

# Publish replies, dead letters of its own (messages it rejects for good), and its delivery probes to the intents
# topic (consumer/transport/delivery_watch.py: refused, every probe failed and readiness could not see a real stall).
resource "google_pubsub_topic_iam_member" "consumer_publishes" {
  for_each = toset(["intents", "intent-replies", "intents-dead-letter"])
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

# The consumer's metrics (its logs go through the VM's logging agent, as the VM's account).
resource "google_project_iam_member" "consumer_metrics" {
  project = var.project_id
  role    = "roles/monitoring.metricWriter"
  member  = local.member
}

# Read its own IB login secret, and no other: a secret-level grant, never a project-level secretAccessor. The VM's
# account only: the consumer's has no secret grant at all.
resource "google_secret_manager_secret_iam_member" "vm_reads_login" {
  secret_id = google_secret_manager_secret.ib_credentials.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.vm_member
}

# The VM's agents write logs (the containers' output) and metrics.
resource "google_project_iam_member" "vm_telemetry" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter"])
  project  = var.project_id
  role     = each.value
  member   = local.vm_member
}

# Pull the image from the shared repository only.
resource "google_artifact_registry_repository_iam_member" "vm_pulls" {
  location   = var.registry.location
  repository = var.registry.name
  role       = "roles/artifactregistry.reader"
  member     = local.vm_member
}

# The single account this module had before keeps being the VM's (same account_id, same grants): nothing an existing
# deployment runs on is destroyed; the consumer's account and its grants are new.
moved {
  from = google_service_account.consumer
  to   = google_service_account.vm
}

moved {
  from = google_secret_manager_secret_iam_member.consumer_reads_login
  to   = google_secret_manager_secret_iam_member.vm_reads_login
}

moved {
  from = google_project_iam_member.consumer_telemetry
  to   = google_project_iam_member.vm_telemetry
}

moved {
  from = google_artifact_registry_repository_iam_member.consumer_pulls
  to   = google_artifact_registry_repository_iam_member.vm_pulls
}
