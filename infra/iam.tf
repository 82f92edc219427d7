# Two identities with only what each needs.

resource "google_service_account" "consumer" {
  account_id   = "ib-consumer"
  display_name = "IB intent consumer (VM running IB Gateway + consumer)"
}

resource "google_service_account" "scheduler" {
  account_id   = "ib-scheduler"
  display_name = "Cloud Scheduler: publishes scheduled intents"
}

# Scheduler: publish to the intents topic, nothing else.
resource "google_pubsub_topic_iam_member" "scheduler_publishes_intents" {
  topic  = google_pubsub_topic.declared["intents"].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.scheduler.email}"
}

# Consumer: pull its subscription.
resource "google_pubsub_subscription_iam_member" "consumer_subscribes" {
  subscription = google_pubsub_subscription.declared["intents-consumer"].id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.consumer.email}"
}

# Consumer: publish replies and dead letters of its own (messages it rejects for good).
resource "google_pubsub_topic_iam_member" "consumer_publishes" {
  for_each = toset(["intent-replies", "intents-dead-letter"])
  topic    = google_pubsub_topic.declared[each.value].id
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.consumer.email}"
}

# Consumer: Firestore (no finer grant than the project exists for documents).
resource "google_project_iam_member" "consumer_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.consumer.email}"
}

# Consumer: read the one IB login secret.
resource "google_secret_manager_secret_iam_member" "consumer_reads_login" {
  secret_id = google_secret_manager_secret.ib_credentials.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.consumer.email}"
}

# Consumer (the VM): write logs and metrics.
resource "google_project_iam_member" "consumer_telemetry" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter"])
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${google_service_account.consumer.email}"
}

# Consumer (the VM): pull the image from our repository only.
resource "google_artifact_registry_repository_iam_member" "consumer_pulls" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.consumer.email}"
}
