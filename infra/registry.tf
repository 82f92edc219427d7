resource "google_artifact_registry_repository" "images" {
  location      = var.region
  repository_id = "ib-consumer"
  format        = "DOCKER"
  description   = "gateway-image: IB Gateway + IBC + the intent consumer"

  depends_on = [google_project_service.apis]
}
