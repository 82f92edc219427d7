# The runtime: per deployment, one small Container-Optimized OS VM running the gateway-image container under systemd
# (infra/modules/deployment); here the network they share.
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
