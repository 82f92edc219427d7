# The runtime: one small Container-Optimized OS VM running the gateway-image container under systemd.
#
# Why a VM and not Cloud Run: IB Gateway is a long-lived, stateful login session holding a persistent socket to IB,
# restarted by IBC on IB's nightly schedule; the consumer holds a streaming pull. Cloud Run would need CPU always
# allocated, min = max = 1 instance and would still recycle instances at will, which costs a fresh login (and a 2FA
# push on live accounts) every time. A VM keeps one process for weeks, for about a quarter of the price.
#
# No public IP: egress (IB's servers) goes through Cloud NAT; Google APIs through Private Google Access.

resource "google_compute_network" "vpc" {
  name                    = "ib-consumer"
  auto_create_subnetworks = false
  depends_on              = [google_project_service.apis]
}

resource "google_compute_subnetwork" "vm" {
  name                     = "ib-consumer-${var.region}"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = "10.20.0.0/28"
  private_ip_google_access = true
  # VPC flow logs, sampled: one VM's traffic to IB and Google APIs is small and cheap to keep.
  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "nat" {
  name    = "ib-consumer-nat"
  region  = var.region
  network = google_compute_network.vpc.id
}

resource "google_compute_router_nat" "nat" {
  name                               = "ib-consumer-nat"
  router                             = google_compute_router.nat.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"
  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# Nothing listens for the outside world. SSH only through Identity-Aware Proxy, for debugging.
resource "google_compute_firewall" "iap_ssh" {
  name          = "ib-consumer-iap-ssh"
  network       = google_compute_network.vpc.id
  direction     = "INGRESS"
  source_ranges = ["35.235.240.0/20"]
  target_tags   = ["ib-consumer"]
  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}

locals {
  container_env = merge(
    {
      GOOGLE_CLOUD_PROJECT  = var.project_id
      TRADING_MODE          = var.trading_mode
      IB_CREDENTIALS_SECRET = "${google_secret_manager_secret.ib_credentials.id}/versions/latest"
      LOG_FORMAT            = "json"
    },
    var.read_only_api == null ? {} : { IB_READ_ONLY_API = var.read_only_api ? "yes" : "no" },
    var.consumer_env,
    # Last, so consumer_env cannot override them: the live guard's ceilings live here, not in Firestore (which the
    # consumer's identity can write); config/{mode} can only tighten them.
    # The accounts served are the deployment's identity too: its books and its messages are chosen by them.
    {
      ALLOW_LIVE         = var.trading_mode == "live" && var.live_trading_acknowledged ? "yes" : "no"
      LEVERAGE_CAP_MAX   = tostring(var.leverage_cap_max)
      IB_ACCOUNTS        = join(",", var.ib_accounts)
      DEFAULT_DEPLOYMENT = var.default_deployment ? "yes" : "no"
    },
  )
}

# The VM was counted (0 while image was empty); one address for it now that the image is required.
moved {
  from = google_compute_instance.consumer[0]
  to   = google_compute_instance.consumer
}

resource "google_compute_instance" "consumer" {
  name         = "ib-consumer"
  zone         = var.zone
  machine_type = var.machine_type
  tags         = ["ib-consumer"]
  labels       = { app = "ib-intent-consumer", trading-mode = var.trading_mode }

  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image = "cos-cloud/cos-stable"
      size  = 10
      type  = "pd-balanced"
    }
  }

  network_interface {
    subnetwork = google_compute_subnetwork.vm.id
    # no access_config: no public IP
  }

  service_account {
    email  = google_service_account.consumer.email
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
      image    = var.image
      registry = split("/", var.image)[0]
      env      = local.container_env
    })
  }

  lifecycle {
    precondition {
      condition     = var.trading_mode == "paper" || var.live_trading_acknowledged
      error_message = "trading_mode = live needs live_trading_acknowledged = true (see docs/deployment.md, Going live)."
    }
  }

  depends_on = [
    google_compute_router_nat.nat,
    google_secret_manager_secret_iam_member.consumer_reads_login,
    google_artifact_registry_repository_iam_member.consumer_pulls,
  ]
}
