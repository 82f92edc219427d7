# Alert policies on the log-based metrics of metrics.tf, to the channels of var.alert_emails (email, by default)
# and var.alert_notification_channels. Each alert closes itself a day after its condition stops holding.

locals {
  alert_channels = concat(
    [for channel in google_monitoring_notification_channel.email : channel.id],
    var.alert_notification_channels,
  )
  user_metric = "logging.googleapis.com/user"
  # PromQL's hour() is UTC; an empty list: a disconnect alerts at any hour.
  outside_restart = length(var.gateway_restart_hours_utc) == 0 ? "vector(1)" : join(" and ", [for h in var.gateway_restart_hours_utc : "hour() != ${h}"])
}

resource "google_monitoring_notification_channel" "email" {
  for_each     = toset(var.alert_emails)
  display_name = "ib-consumer alerts: ${each.value}"
  type         = "email"
  labels = {
    email_address = each.value
  }
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "error_replies" {
  display_name          = "ib-consumer: error replies"
  combiner              = "OR"
  notification_channels = local.alert_channels
  conditions {
    display_name = "an intent answered status=error"
    condition_threshold {
      filter          = "resource.type = \"gce_instance\" AND metric.type = \"${local.user_metric}/${google_logging_metric.intents.name}\" AND metric.label.status = \"error\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.intent"]
      }
    }
  }
  alert_strategy {
    auto_close = "86400s"
  }
  documentation {
    mime_type = "text/markdown"
    content   = "An intent failed (status error). The reply on intent-replies and the activity collection say why; docs/deployment.md lists where to look."
  }
}

resource "google_monitoring_alert_policy" "risk_alerts" {
  display_name          = "ib-consumer: risk limit breached (alert=true)"
  combiner              = "OR"
  notification_channels = local.alert_channels
  conditions {
    display_name = "a reply with alert=true"
    condition_threshold {
      filter          = "resource.type = \"gce_instance\" AND metric.type = \"${local.user_metric}/${google_logging_metric.risk_alerts.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
  alert_strategy {
    auto_close = "86400s"
  }
  documentation {
    mime_type = "text/markdown"
    content   = "risk-check found a limit of config/{mode} risk breached: its reply lists the breaches; a halt action has set tradingEnabled=false with haltedReason (README, Risk limits)."
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "ib-consumer: dead letters"
  combiner              = "OR"
  notification_channels = local.alert_channels
  conditions {
    display_name = "a message moved to the dead-letter topic"
    condition_threshold {
      filter          = "resource.type = \"gce_instance\" AND metric.type = \"${local.user_metric}/${google_logging_metric.dead_lettered.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
  # Every message published to the dead-letter topic, whoever published it: the consumer on either of its paths, or
  # the Pub/Sub service agent forwarding a last attempt that was nacked, overran or died with its process (which no
  # consumer log line tells).
  conditions {
    display_name = "a message published to intents-dead-letter"
    condition_threshold {
      filter          = "resource.type = \"pubsub_topic\" AND resource.label.topic_id = \"intents-dead-letter\" AND metric.type = \"pubsub.googleapis.com/topic/send_message_operation_count\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
  alert_strategy {
    auto_close = "86400s"
  }
  documentation {
    mime_type = "text/markdown"
    content   = "A message was given up on after its last attempt (by the consumer, or by Pub/Sub's dead-letter policy); it waits in intents-dead-letter-hold with its last error in the attributes when the consumer moved it (docs/deployment.md)."
  }
}

resource "google_monitoring_alert_policy" "no_heartbeat" {
  display_name          = "ib-consumer: no heartbeat"
  combiner              = "OR"
  notification_channels = local.alert_channels
  conditions {
    display_name = "no heartbeat line for 10 minutes"
    condition_absent {
      filter   = "resource.type = \"gce_instance\" AND metric.type = \"${local.user_metric}/${google_logging_metric.heartbeats.name}\""
      duration = "600s"
      # Per VM: summed over all, one deployment still heartbeating hid another that had stopped.
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.instance_id"]
      }
    }
  }
  alert_strategy {
    auto_close = "86400s"
  }
  documentation {
    mime_type = "text/markdown"
    content   = "The consumer logged no heartbeat (HEARTBEAT_LOG_SECONDS, 60 s) for 10 minutes: the process, its container or the VM is down or hung."
  }
}

resource "google_monitoring_alert_policy" "gateway_disconnected" {
  display_name          = "ib-consumer: gateway disconnected"
  combiner              = "OR"
  notification_channels = local.alert_channels
  conditions {
    display_name = "gateway not connected for 5 minutes outside the nightly restart"
    condition_prometheus_query_language {
      query               = "sum(sum_over_time(logging_googleapis_com:user_consumer_heartbeats{gateway!=\"connected\"}[2m])) > 0 and on() (${local.outside_restart})"
      duration            = "300s"
      evaluation_interval = "60s"
    }
  }
  alert_strategy {
    auto_close = "86400s"
  }
  documentation {
    mime_type = "text/markdown"
    content   = "The consumer's heartbeats say the gateway has been away for more than 5 minutes outside IB's nightly restart (var.gateway_restart_hours_utc): trading and read intents are held. Check the gateway container and IBC's log (docs/deployment.md)."
  }
}
