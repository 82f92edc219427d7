# The login's secret only: its value is added by a person (docs/deployment.md, `gcloud secrets versions add`), so it
# never enters the Terraform state.
resource "google_secret_manager_secret" "ib_credentials" {
  secret_id = local.d.ib_credentials_secret_id
  labels    = { app = "ib-intent-consumer", deployment = var.name }
  replication {
    auto {}
  }
}
