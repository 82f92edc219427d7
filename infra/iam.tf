# The scheduler's identity; each deployment has its own, with only its own grants (infra/modules/deployment/iam.tf).

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
