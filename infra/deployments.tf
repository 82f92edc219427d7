# One deployment per IB login (var.deployments): its VM, service account, login secret, filtered subscription and
# scheduler jobs. Everything else in infra/ is shared by all of them.
module "deployment" {
  source   = "./modules/deployment"
  for_each = var.deployments

  name           = each.key
  deployment     = each.value
  other_accounts = flatten([for name, d in var.deployments : d.ib_accounts if name != each.key])

  project_id            = var.project_id
  region                = var.region
  zone                  = var.zone
  subnetwork_id         = google_compute_subnetwork.vm.id
  topic_ids             = { for name, topic in google_pubsub_topic.declared : name => topic.id }
  subscription_settings = local.pubsub.subscriptions[local.consumer_subscription]
  pubsub_service_agent  = local.pubsub_service_agent
  registry = {
    location = google_artifact_registry_repository.images.location
    name     = google_artifact_registry_repository.images.name
  }
  scheduled_jobs            = local.scheduler_jobs
  scheduler_service_account = google_service_account.scheduler.email
  scheduler_enabled         = var.scheduler_enabled

  depends_on = [
    google_project_service.apis,
    google_compute_router_nat.nat,
    google_pubsub_topic_iam_member.scheduler_publishes_intents,
  ]
}

# A job of schedules.yaml addressed to an account no deployment serves would silently never run.
check "every_scheduled_account_is_served" {
  assert {
    condition = alltrue([
      for fire in values(local.scheduled_jobs) :
      fire.account == "" || contains(flatten(values(var.deployments)[*].ib_accounts), fire.account)
    ])
    error_message = "schedules.yaml lists an account no deployment serves (var.deployments ib_accounts): its jobs are not created."
  }
}
