# The runtime: one small Container-Optimized OS VM running the gateway-image container under systemd (why a VM:
# infra/compute.tf at the root). No public IP: egress goes through the shared Cloud NAT.
resource "google_compute_instance" "consumer" {
  name         = local.vm_name
  zone         = var.zone
  machine_type = local.d.machine_type
  tags         = ["ib-consumer"]
  labels       = { app = "ib-intent-consumer", trading-mode = local.d.trading_mode, deployment = var.name }

  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image = "cos-cloud/cos-stable"
      size  = 10
      type  = "pd-balanced"
    }
  }

  network_interface {
    subnetwork = var.subnetwork_id
    # no access_config: no public IP
  }

  service_account {
    email  = google_service_account.vm.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = {
    enable-oslogin            = "TRUE"
    block-project-ssh-keys    = "TRUE"
    google-logging-enabled    = "true"
    google-monitoring-enabled = "true"
    user-data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
      image    = local.d.image
      registry = split("/", local.d.image)[0]
      env      = local.container_env
    })
  }

  lifecycle {
    precondition {
      condition     = local.d.trading_mode == "paper" || local.d.live_trading_acknowledged
      error_message = "trading_mode = live needs live_trading_acknowledged = true (see docs/deployment.md, Going live)."
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.vm_reads_login,
    google_artifact_registry_repository_iam_member.vm_pulls,
    google_service_account_iam_member.vm_impersonates_consumer,
  ]
}
