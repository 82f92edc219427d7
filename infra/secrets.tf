# The secret only: its value is added by a person (docs/deployment.md, `gcloud secrets versions add`), so it never
# enters the Terraform state.
resource "google_secret_manager_secret" "ib_credentials" {
  secret_id = var.ib_credentials_secret_id
  labels    = { app = "ib-intent-consumer" }
  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}
