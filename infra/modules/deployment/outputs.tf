output "service_account" {
  description = "The VM's (and the launcher's) account: reads the IB login, mints the consumer's tokens."
  value       = google_service_account.vm.email
}

output "consumer_service_account" {
  description = "The consumer process's account: Pub/Sub, Firestore, no secret."
  value       = google_service_account.workload.email
}

output "ib_credentials_secret" {
  value = google_secret_manager_secret.ib_credentials.secret_id
}

output "vm" {
  value = google_compute_instance.consumer.name
}

output "subscription" {
  value = google_pubsub_subscription.intents.name
}

output "scheduler_jobs" {
  value = { for name, job in google_cloud_scheduler_job.declared : name => { schedule = job.schedule, paused = job.paused } }
}
