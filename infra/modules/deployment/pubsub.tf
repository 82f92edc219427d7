# This deployment's subscription to the shared intents topic, with the settings pubsub.yaml declares for the
# consumer's subscription (intents-consumer, which the local stack creates) and a filter on its accounts.
# A filter cannot be changed on an existing subscription: Pub/Sub replaces it (docs/deployment.md, migrating).
resource "google_pubsub_subscription" "intents" {
  name   = local.subscription
  topic  = var.topic_ids[var.subscription_settings.topic]
  labels = { app = "ib-intent-consumer", deployment = var.name }
  filter = local.filter

  ack_deadline_seconds         = try(var.subscription_settings.ackDeadlineSeconds, 60)
  message_retention_duration   = try("${var.subscription_settings.messageRetentionSeconds}s", null)
  enable_exactly_once_delivery = try(var.subscription_settings.exactlyOnceDelivery, false)

  expiration_policy {
    ttl = ""
  }

  lifecycle {
    precondition {
      condition     = length(local.filter) <= 256
      error_message = "The subscription filter is longer than Pub/Sub's 256 bytes: too many accounts in one deployment, or too many outside the default one."
    }
  }

  dynamic "retry_policy" {
    for_each = try([var.subscription_settings.retryPolicy], [])
    content {
      minimum_backoff = "${retry_policy.value.minimumBackoffSeconds}s"
      maximum_backoff = "${retry_policy.value.maximumBackoffSeconds}s"
    }
  }

  dynamic "dead_letter_policy" {
    for_each = try([var.subscription_settings.deadLetter], [])
    content {
      dead_letter_topic     = var.topic_ids[dead_letter_policy.value.topic]
      max_delivery_attempts = dead_letter_policy.value.maxDeliveryAttempts
    }
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it acks the source, so it must be a subscriber of it.
resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  count        = try(var.subscription_settings.deadLetter, null) == null ? 0 : 1
  subscription = google_pubsub_subscription.intents.id
  role         = "roles/pubsub.subscriber"
  member       = var.pubsub_service_agent
}
