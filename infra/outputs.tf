output "image_repository" {
  description = "Push gateway-image here (docs/deployment.md)."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "scheduler_service_account" {
  value = google_service_account.scheduler.email
}

output "deployments" {
  description = "Per deployment: its VM, the VM's and the consumer's service accounts, subscription, login secret (add the login with: gcloud secrets versions add <ib_credentials_secret> --data-file=-) and scheduler jobs."
  value = { for name, d in module.deployment : name => {
    vm                    = d.vm
    service_account       = d.service_account
    consumer_account      = d.consumer_service_account
    subscription          = d.subscription
    ib_credentials_secret = d.ib_credentials_secret
    scheduler_jobs        = d.scheduler_jobs
  } }
}
