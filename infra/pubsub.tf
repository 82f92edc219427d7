# Topics and the shared subscriptions, one resource per entry of pubsub.yaml; the consumer's subscription
# (intents-consumer) is per deployment, with its filter (infra/modules/deployment/pubsub.tf).
resource "google_pubsub_topic" "declared" {
  for_each = local.pubsub.topics
  name     = each.key
  labels   = { app = "ib-intent-consumer" }

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "declared" {
  for_each = local.shared_subscriptions
  name     = each.key
  topic    = google_pubsub_topic.declared[each.value.topic].id
  labels   = { app = "ib-intent-consumer" }

  ack_deadline_seconds         = try(each.value.ackDeadlineSeconds, 60)
  message_retention_duration   = try("${each.value.messageRetentionSeconds}s", null)
  enable_exactly_once_delivery = try(each.value.exactlyOnceDelivery, false)

  # Never expire for inactivity: the dead-letter hold and the replies monitor may sit unread for weeks.
  expiration_policy {
    ttl = ""
  }

  dynamic "retry_policy" {
    for_each = try([each.value.retryPolicy], [])
    content {
      minimum_backoff = "${retry_policy.value.minimumBackoffSeconds}s"
      maximum_backoff = "${retry_policy.value.maximumBackoffSeconds}s"
    }
  }

  dynamic "dead_letter_policy" {
    for_each = try([each.value.deadLetter], [])
    content {
      dead_letter_topic     = google_pubsub_topic.declared[dead_letter_policy.value.topic].id
      max_delivery_attempts = dead_letter_policy.value.maxDeliveryAttempts
    }
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it publishes to the dead-letter topic and acks the source.
locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.dead_letter_topics
  topic    = google_pubsub_topic.declared[each.value].id
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  for_each     = local.dead_lettered
  subscription = google_pubsub_subscription.declared[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
