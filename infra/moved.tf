# Before infra/modules/deployment, infra/ created one deployment at the root. These blocks move its resources into
# the deployment keyed "paper" (give it legacy_names = true to keep its names), so that an existing single
# deployment plans without destroying its VM, its service account or its secret (docs/deployment.md, "From one
# deployment to the map"). With no "paper" key they are moved there and then planned for destruction, as without them.

moved {
  from = google_compute_instance.consumer[0]
  to   = google_compute_instance.consumer
}

moved {
  from = google_compute_instance.consumer
  to   = module.deployment["paper"].google_compute_instance.consumer
}

moved {
  from = google_service_account.consumer
  to   = module.deployment["paper"].google_service_account.vm
}

moved {
  from = google_secret_manager_secret.ib_credentials
  to   = module.deployment["paper"].google_secret_manager_secret.ib_credentials
}

moved {
  from = google_secret_manager_secret_iam_member.consumer_reads_login
  to   = module.deployment["paper"].google_secret_manager_secret_iam_member.vm_reads_login
}

moved {
  from = google_pubsub_subscription.declared["intents-consumer"]
  to   = module.deployment["paper"].google_pubsub_subscription.intents
}

moved {
  from = google_pubsub_subscription_iam_member.dead_letter_source_subscriber["intents-consumer"]
  to   = module.deployment["paper"].google_pubsub_subscription_iam_member.dead_letter_source_subscriber[0]
}

moved {
  from = google_pubsub_subscription_iam_member.consumer_subscribes
  to   = module.deployment["paper"].google_pubsub_subscription_iam_member.consumer_subscribes
}

moved {
  from = google_pubsub_topic_iam_member.consumer_publishes
  to   = module.deployment["paper"].google_pubsub_topic_iam_member.consumer_publishes
}

moved {
  from = google_project_iam_member.consumer_firestore
  to   = module.deployment["paper"].google_project_iam_member.consumer_firestore
}

moved {
  from = google_project_iam_member.consumer_telemetry
  to   = module.deployment["paper"].google_project_iam_member.vm_telemetry
}

moved {
  from = google_artifact_registry_repository_iam_member.consumer_pulls
  to   = module.deployment["paper"].google_artifact_registry_repository_iam_member.vm_pulls
}

moved {
  from = google_cloud_scheduler_job.declared
  to   = module.deployment["paper"].google_cloud_scheduler_job.declared
}
