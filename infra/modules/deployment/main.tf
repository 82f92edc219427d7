locals {
  d = var.deployment
  # legacy_names keeps the names of the single deployment infra/ created before this module, so its VM, service
  # account and subscription are moved into the module rather than replaced (moved.tf at the root).
  vm_name      = local.d.legacy_names ? "ib-consumer" : "ib-consumer-${var.name}"
  subscription = local.d.legacy_names ? "intents-consumer" : "intents-${var.name}"

  container_env = merge(
    {
      GOOGLE_CLOUD_PROJECT  = var.project_id
      TRADING_MODE          = local.d.trading_mode
      IB_CREDENTIALS_SECRET = "${google_secret_manager_secret.ib_credentials.id}/versions/latest"
      LOG_FORMAT            = "json"
    },
    local.d.read_only_api == null ? {} : { IB_READ_ONLY_API = local.d.read_only_api ? "yes" : "no" },
    local.d.consumer_env,
    # Last, so consumer_env cannot override them: the live guard's ceilings live here, not in Firestore (which the
    # consumer's identity can write); config/{mode} can only tighten them.
    # The accounts served and the subscription are the deployment's identity too: its books and its messages.
    {
      ALLOW_LIVE           = local.d.trading_mode == "live" && local.d.live_trading_acknowledged ? "yes" : "no"
      LEVERAGE_CAP_MAX     = tostring(local.d.leverage_cap_max)
      IB_ACCOUNTS          = join(",", local.d.ib_accounts)
      DEFAULT_DEPLOYMENT   = local.d.default ? "yes" : "no"
      INTENTS_SUBSCRIPTION = google_pubsub_subscription.intents.name
      # The launcher serves the consumer this account's tokens, never the VM's (gateway-image/launcher/metadata_proxy.py).
      CONSUMER_SERVICE_ACCOUNT = google_service_account.workload.email
    },
  )
}
