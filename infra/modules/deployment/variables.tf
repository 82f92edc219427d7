# One deployment: one IB login, its gateway + consumer VM, and what only it may use. The shared things (topics,
# network, Firestore, registry, alerts) come in from the root module.

variable "name" {
  description = "The deployment's key in var.deployments (paper, live...): its resources' names derive from it."
  type        = string
}

variable "deployment" {
  description = "This deployment's entry of the root's var.deployments (validated there)."
  type = object({
    trading_mode              = string
    ib_accounts               = list(string)
    default                   = bool
    image                     = string
    machine_type              = string
    ib_credentials_secret_id  = string
    live_trading_acknowledged = bool
    leverage_cap_max          = number
    read_only_api             = optional(bool)
    consumer_env              = map(string)
    legacy_names              = bool
  })
}

variable "other_accounts" {
  description = "The accounts the other deployments serve: the default deployment's filter leaves their messages to them."
  type        = list(string)
}

variable "project_id" {
  type = string
}

variable "region" {
  type = string
}

variable "zone" {
  type = string
}

variable "subnetwork_id" {
  type = string
}

variable "topic_ids" {
  description = "Shared topics by name (intents, intent-replies, intents-dead-letter) to their ids."
  type        = map(string)
}

variable "subscription_settings" {
  description = "The consumer subscription's settings from pubsub.yaml (the entry intents-consumer), every deployment's template."
  type        = any
}

variable "pubsub_service_agent" {
  description = "The Pub/Sub service agent (serviceAccount:...): it dead-letters, so it must pull this subscription."
  type        = string
}

variable "registry" {
  description = "The shared image repository, whose reader this deployment's service account becomes."
  type        = object({ location = string, name = string })
}

variable "scheduled_jobs" {
  description = "Every scheduler job of schedules.yaml (root local.scheduled_jobs, with its message): the module creates those for its accounts, and the unaddressed ones if it is the default."
  type        = any
}

variable "scheduler_service_account" {
  type = string
}

variable "scheduler_enabled" {
  type = bool
}
