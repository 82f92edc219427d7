variable "project_id" {
  description = "The Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Region for the VM, the scheduler jobs and Artifact Registry. us-east4 (Virginia) is close to IB's US servers."
  type        = string
  default     = "us-east4"
}

variable "zone" {
  description = "Zone of the VM."
  type        = string
  default     = "us-east4-a"
}

variable "firestore_location" {
  description = "Firestore location (nam5 = multi-region US). Cannot be changed after creation."
  type        = string
  default     = "nam5"
}

variable "deployments" {
  description = <<-EOT
    One deployment (an IB login: a gateway + consumer VM, its service account, login secret and filtered subscription;
    infra/modules/deployment) per key. Fields:
    trading_mode: paper or live (IBC's TradingMode and the API port 4002 / 4001).
    ib_accounts: IB_ACCOUNTS, the account ids this login trades (several for an advisor or household login); its
      subscription receives only the messages addressed to them, and its books in Firestore are kept per account.
    default: DEFAULT_DEPLOYMENT, exactly one: it also receives and answers the unaddressed messages, and runs the
      scheduler jobs that list no accounts.
    image: the gateway-image container (REGION-docker.pkg.dev/PROJECT/ib-consumer/gateway:TAG), required: an apply
      without it would otherwise plan to destroy the VM.
    machine_type: VM size; IB Gateway's JVM wants ~1 GB, e2-small (2 GB) fits the gateway and the consumer.
    ib_credentials_secret_id: its Secret Manager secret ({"username": ..., "password": ...}); Terraform creates the
      secret, never its value; only this deployment's service account can read it.
    live_trading_acknowledged: must be true for trading_mode = live; it also sets ALLOW_LIVE=yes.
    leverage_cap_max: LEVERAGE_CAP_MAX, the largest gross exposure (x net liquidation) accepted, in (0, 10].
    read_only_api: IBC ReadOnlyApi; null = the launcher's default (read-only in live, read-write in paper).
    consumer_env: extra container environment (LOG_LEVEL...); it cannot override the live guard or the accounts.
    legacy_names: keep the names of the single deployment infra/ created before (VM and service account
      ib-consumer, subscription intents-consumer), so that it moves into the module without being replaced.
  EOT
  type = map(object({
    trading_mode              = optional(string, "paper")
    ib_accounts               = list(string)
    default                   = optional(bool, false)
    image                     = string
    machine_type              = optional(string, "e2-small")
    ib_credentials_secret_id  = string
    live_trading_acknowledged = optional(bool, false)
    leverage_cap_max          = optional(number, 1)
    read_only_api             = optional(bool)
    consumer_env              = optional(map(string), {})
    legacy_names              = optional(bool, false)
  }))
  validation {
    condition     = length([for d in values(var.deployments) : d if d.default]) == 1
    error_message = "Exactly one deployment must be the default (default = true): it answers the unaddressed messages."
  }
  validation {
    condition     = length(flatten(values(var.deployments)[*].ib_accounts)) == length(distinct(flatten(values(var.deployments)[*].ib_accounts)))
    error_message = "An account is in two deployments: each account is served by one deployment (one IB login) only."
  }
  validation {
    condition = alltrue([for d in values(var.deployments) : length(d.ib_accounts) > 0 && alltrue([
      for a in d.ib_accounts : can(regex("^[A-Za-z0-9_-]{1,64}$", a))
    ])])
    error_message = "ib_accounts must list at least one IB account id per deployment (letters, digits, - and _)."
  }
  validation {
    condition = alltrue([for d in values(var.deployments) :
    can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^ ]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", d.image))])
    error_message = "image must name a pushed image with its tag or digest (REGION-docker.pkg.dev/PROJECT/ib-consumer/gateway:TAG); keep it in terraform.tfvars."
  }
  validation {
    condition     = alltrue([for d in values(var.deployments) : contains(["paper", "live"], d.trading_mode)])
    error_message = "trading_mode must be paper or live."
  }
  validation {
    condition     = alltrue([for d in values(var.deployments) : d.leverage_cap_max > 0 && d.leverage_cap_max <= 10])
    error_message = "leverage_cap_max must be in (0, 10]."
  }
  validation {
    condition     = alltrue([for name, d in var.deployments : can(regex("^[a-z][a-z0-9-]{0,15}$", name))])
    error_message = "Deployment keys name resources (ib-consumer-KEY, intents-KEY): lowercase letters, digits and -, at most 16."
  }
  validation {
    condition     = length([for d in values(var.deployments) : d if d.legacy_names]) <= 1
    error_message = "Only one deployment can keep the single deployment's names (legacy_names)."
  }
  validation {
    condition     = length(distinct(values(var.deployments)[*].ib_credentials_secret_id)) == length(var.deployments)
    error_message = "Each deployment needs its own login secret (ib_credentials_secret_id): IB allows one session per login."
  }
}

variable "scheduler_enabled" {
  description = "false (default) keeps every scheduler job paused until the deployment is checked; true, the guide's last step, keeps each job's own paused flag from schedules.yaml. Keep it in terraform.tfvars once set."
  type        = bool
  default     = false
}

variable "alert_emails" {
  description = "Email addresses Cloud Monitoring alerts go to (one email notification channel each; infra/alerts.tf)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for e in var.alert_emails : can(regex("^[^@ ]+@[^@ ]+\\.[^@ ]+$", e))])
    error_message = "alert_emails must be email addresses."
  }
}

variable "alert_notification_channels" {
  description = "Existing notification channels (projects/P/notificationChannels/ID: Slack, PagerDuty, SMS...) alerts also go to."
  type        = list(string)
  default     = []
}

variable "gateway_restart_hours_utc" {
  description = "UTC hours of IB Gateway's nightly restart (IBC's AutoRestartTime, both sides of daylight saving time): a disconnect then does not alert."
  type        = list(number)
  default     = [3, 4]
  validation {
    condition     = alltrue([for h in var.gateway_restart_hours_utc : h >= 0 && h <= 23 && floor(h) == h])
    error_message = "gateway_restart_hours_utc must be whole hours 0-23."
  }
}
