# The scheduler jobs of schedules.yaml this deployment runs (local.jobs): one per job and account it serves, and the
# unaddressed ones if it is the default. Job names are the root's keys (JOB or JOB-ACCOUNT), unique across deployments
# because no account is in two deployments and one deployment is the default.
#
# The jobs publish through the Pub/Sub REST API (an HTTP target with an OAuth token of the scheduler service account)
# rather than a pubsub_target: a pubsub_target always publishes as the Google-managed Cloud Scheduler agent, which
# cannot be limited to one topic. This way the scheduler's identity can publish to the intents topic and nothing else.
resource "google_cloud_scheduler_job" "declared" {
  for_each    = local.jobs
  name        = each.key
  description = try(each.value.job.description, null)
  region      = var.region
  schedule    = each.value.job.schedule
  time_zone   = each.value.time_zone
  paused      = var.scheduler_enabled ? try(each.value.job.paused, false) : true

  attempt_deadline = "30s"
  retry_config {
    retry_count          = 3
    min_backoff_duration = "10s"
    max_backoff_duration = "60s"
  }

  http_target {
    http_method = "POST"
    uri         = "https://pubsub.googleapis.com/v1/${var.topic_ids["intents"]}:publish"
    headers     = { "Content-Type" = "application/json" }
    body = base64encode(jsonencode({
      messages = [{
        data       = base64encode(jsonencode(each.value.message.data))
        attributes = each.value.message.attributes
      }]
    }))
    oauth_token {
      service_account_email = var.scheduler_service_account
      scope                 = "https://www.googleapis.com/auth/pubsub"
    }
  }
}
