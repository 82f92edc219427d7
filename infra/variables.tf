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

variable "image" {
  description = "The gateway-image container (REGION-docker.pkg.dev/PROJECT/ib-consumer/gateway:TAG), kept in terraform.tfvars. Required: an apply without it would otherwise plan to destroy the VM. The first apply targets the repository and the secret only (docs/deployment.md, step 2)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^ ]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.image))
    error_message = "image must name a pushed image with its tag or digest (REGION-docker.pkg.dev/PROJECT/ib-consumer/gateway:TAG); keep it in terraform.tfvars."
  }
}

variable "machine_type" {
  description = "VM size. IB Gateway's JVM wants ~1 GB; e2-small (2 GB) fits the gateway and the consumer."
  type        = string
  default     = "e2-small"
}

variable "trading_mode" {
  description = "paper or live: IBC's TradingMode and the API port (4002 / 4001)."
  type        = string
  default     = "paper"
  validation {
    condition     = contains(["paper", "live"], var.trading_mode)
    error_message = "trading_mode must be paper or live."
  }
}

variable "ib_accounts" {
  description = "IB_ACCOUNTS: the IB account ids this deployment's login trades (one, or several for an advisor or household login). The books in Firestore are kept per account (docs/firestore.md)."
  type        = list(string)
  validation {
    condition     = length(var.ib_accounts) > 0 && alltrue([for a in var.ib_accounts : can(regex("^[A-Za-z0-9_-]{1,64}$", a))])
    error_message = "ib_accounts must list at least one IB account id (letters, digits, - and _)."
  }
}

variable "default_deployment" {
  description = "DEFAULT_DEPLOYMENT: whether this deployment answers messages addressed to no account or to an account nobody serves. Exactly one deployment on the intents topic is the default (README, Accounts and routing)."
  type        = bool
  default     = true
}

variable "live_trading_acknowledged" {
  description = "Must be true for trading_mode = live: a second, deliberate switch. It also sets ALLOW_LIVE=yes for the consumer."
  type        = bool
  default     = false
}

variable "leverage_cap_max" {
  description = "LEVERAGE_CAP_MAX: the largest gross exposure (x net liquidation) the consumer accepts; config/{mode} leverageCap can only lower it."
  type        = number
  default     = 1
  validation {
    condition     = var.leverage_cap_max > 0 && var.leverage_cap_max <= 10
    error_message = "leverage_cap_max must be in (0, 10]."
  }
}

variable "read_only_api" {
  description = "IBC ReadOnlyApi. null = the launcher's default: read-only in live, read-write in paper."
  type        = bool
  default     = null
}

variable "ib_credentials_secret_id" {
  description = "Secret Manager secret id holding {\"username\": ..., \"password\": ...}. Terraform creates the secret, never its value."
  type        = string
  default     = "ib-credentials"
}

variable "consumer_env" {
  description = "Extra environment variables for the container (consumer settings such as LOG_LEVEL, INTENT_TIMEOUT_SECONDS)."
  type        = map(string)
  default     = {}
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
