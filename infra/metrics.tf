# Log-based metrics: the consumer logs every counted event as one structured line (consumer/metrics.py), and
# Cloud Monitoring counts them here. Labels come from the JSON fields of those lines.

resource "google_logging_metric" "intents" {
  name        = "consumer/intents"
  description = "Intents finished, by intent and status."
  filter      = "jsonPayload.message=\"intent finished\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key        = "intent"
      value_type = "STRING"
    }
    labels {
      key        = "status"
      value_type = "STRING"
    }
  }
  label_extractors = {
    intent = "EXTRACT(jsonPayload.intent)"
    status = "EXTRACT(jsonPayload.status)"
  }
}

resource "google_logging_metric" "intent_latency" {
  name            = "consumer/intent_latency"
  description     = "Intent latency from claim to reply, in milliseconds."
  filter          = "jsonPayload.message=\"intent finished\""
  value_extractor = "EXTRACT(jsonPayload.durationMs)"
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "ms"
    labels {
      key        = "intent"
      value_type = "STRING"
    }
  }
  label_extractors = {
    intent = "EXTRACT(jsonPayload.intent)"
  }
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 20
      growth_factor      = 2
      scale              = 1
    }
  }
}

resource "google_logging_metric" "orders" {
  name        = "consumer/orders"
  description = "Orders placed, by outcome (filled, working, rejected, cancelled, unconfirmed)."
  filter      = "jsonPayload.message=\"order settled\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key        = "outcome"
      value_type = "STRING"
    }
  }
  label_extractors = {
    outcome = "EXTRACT(jsonPayload.outcome)"
  }
}

resource "google_logging_metric" "gateway_reconnects" {
  name        = "consumer/gateway_connects"
  description = "Connections to IB Gateway made (the first, and every reconnect after a restart or a drop)."
  filter      = "jsonPayload.message=\"gateway connected\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

resource "google_logging_metric" "dead_lettered" {
  name        = "consumer/dead_lettered"
  description = "Messages the consumer gave up on and moved to the dead-letter topic."
  filter      = "jsonPayload.message=\"giving up after the last attempt; dead-lettering\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

resource "google_logging_metric" "heartbeats" {
  name        = "consumer/heartbeats"
  description = "The consumer's heartbeat lines (HEARTBEAT_LOG_SECONDS apart), by the gateway's state then."
  filter      = "jsonPayload.message=\"heartbeat\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key        = "gateway"
      value_type = "STRING"
    }
  }
  label_extractors = {
    gateway = "EXTRACT(jsonPayload.gateway)"
  }
}

resource "google_logging_metric" "risk_alerts" {
  name        = "consumer/risk_alerts"
  description = "Replies with alert=true: a risk-check that found a limit breached."
  filter      = "jsonPayload.message=\"intent finished\" AND jsonPayload.alert=true"
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}
