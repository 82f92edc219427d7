# One Cloud Scheduler job per entry of schedules.yaml, and per account for an entry that lists `accounts`.
#
# The jobs publish through the Pub/Sub REST API (an HTTP target with an OAuth token of our scheduler service account)
# rather than a pubsub_target: a pubsub_target always publishes as the Google-managed Cloud Scheduler agent, which
# cannot be limited to one topic. This way the scheduler's identity can publish to the intents topic and nothing else.
resource "google_cloud_scheduler_job" "declared" {
  for_each    = local.scheduled_jobs
  name        = each.key
  description = try(each.value.job.description, null)
  region      = var.region
  schedule    = each.value.job.schedule
  time_zone   = local.schedules.timeZone
  paused      = var.scheduler_enabled ? try(each.value.job.paused, false) : true

  attempt_deadline = "30s"
  retry_config {
    retry_count          = 3
    min_backoff_duration = "10s"
    max_backoff_duration = "60s"
  }

  http_target {
    http_method = "POST"
    uri         = "https://pubsub.googleapis.com/v1/${google_pubsub_topic.declared["intents"].id}:publish"
    headers     = { "Content-Type" = "application/json" }
    body = base64encode(jsonencode({
      messages = [{
        data       = base64encode(jsonencode(local.scheduled_messages[each.key].data))
        attributes = local.scheduled_messages[each.key].attributes
      }]
    }))
    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/pubsub"
    }
  }

  depends_on = [google_project_service.apis, google_pubsub_topic_iam_member.scheduler_publishes_intents]
}
