output "image_repository" {
  description = "Push gateway-image here (docs/deployment.md)."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "consumer_service_account" {
  value = google_service_account.consumer.email
}

output "scheduler_service_account" {
  value = google_service_account.scheduler.email
}

output "ib_credentials_secret" {
  description = "Add the login with: gcloud secrets versions add <this> --data-file=-"
  value       = google_secret_manager_secret.ib_credentials.secret_id
}

output "scheduler_jobs" {
  value = { for name, job in google_cloud_scheduler_job.declared : name => { schedule = job.schedule, paused = job.paused } }
}

output "vm" {
  value = google_compute_instance.consumer.name
}
