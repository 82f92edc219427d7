# The shared declarations: the same files the local stack provisions the emulators from
# (consumer/devstack/provision.py), so the local and the cloud topology and schedules cannot drift.
locals {
  pubsub    = yamldecode(file("${path.module}/pubsub.yaml"))
  schedules = yamldecode(file("${path.module}/schedules.yaml"))

  # Subscriptions whose messages can be dead-lettered (the Pub/Sub service agent needs rights on them).
  dead_lettered      = { for name, s in local.pubsub.subscriptions : name => s if try(s.deadLetter, null) != null }
  dead_letter_topics = toset([for name, s in local.dead_lettered : s.deadLetter.topic])

  # One scheduled message per job: the intent envelope (schemas/envelope.schema.json) and the attributes the
  # consumer derives the idempotency key from (schedule + trading day), as schedules.yaml describes.
  scheduled_messages = {
    for job in local.schedules.jobs : job.name => {
      data = merge(
        { intent = job.intent, schedule = job.name, params = try(job.params, {}) },
        try({ dryRun = job.dryRun }, {}),
        try({ maxAgeSeconds = job.maxAgeSeconds }, {}),
      )
      attributes = { intent = job.intent, schedule = job.name }
    }
  }
}
