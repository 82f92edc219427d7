resource "google_firestore_database" "default" {
  name                    = "(default)"
  location_id             = var.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON"

  depends_on = [google_project_service.apis]
}

# Large values nothing queries, left out of the automatic single-field indexes: a stored reply and an activity
# record's result (JSON text: an index of its first 1,500 bytes serves nobody), an activity record's params, a
# strategy's positions and realized P&L (maps: indexing every nested field of 1,000 instruments slows each write and
# can pass Firestore's 40,000 index entries per document). The fields queried (state, requestId, date, finishedAt,
# tradingMode) keep their indexes.
locals {
  unindexed_fields = {
    "requests-reply"     = { collection = "requests", field = "replyJson" }
    "activity-result"    = { collection = "activity", field = "resultJson" }
    "activity-params"    = { collection = "activity", field = "params" }
    "holdings-positions" = { collection = "holdings", field = "positions" }
    "holdings-realized"  = { collection = "holdings", field = "realized" }
  }
}

resource "google_firestore_field" "unindexed" {
  for_each   = local.unindexed_fields
  project    = var.project_id
  database   = google_firestore_database.default.name
  collection = each.value.collection
  field      = each.value.field
  # An empty block removes every single-field index of the field (and of what it holds).
  index_config {}
}
