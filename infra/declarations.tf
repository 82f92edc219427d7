# The shared declarations: the same files the local stack provisions the emulators from
# (devstack/provision.py), so the local and the cloud topology and schedules cannot drift.
locals {
  pubsub    = yamldecode(file("${path.module}/pubsub.yaml"))
  schedules = yamldecode(file("${path.module}/schedules.yaml"))

  # The consumer's subscription is every deployment's template (one each, filtered on its accounts: the module);
  # the local stack creates it as declared. The others are shared.
  consumer_subscription = "intents-consumer"
  shared_subscriptions  = { for name, s in local.pubsub.subscriptions : name => s if name != local.consumer_subscription }

  # Subscriptions whose messages can be dead-lettered (the Pub/Sub service agent needs rights on them; the module
  # grants it on each deployment's own subscription).
  dead_lettered      = { for name, s in local.shared_subscriptions : name => s if try(s.deadLetter, null) != null }
  dead_letter_topics = toset([for name, s in local.pubsub.subscriptions : s.deadLetter.topic if try(s.deadLetter, null) != null])

  # One scheduler job per job and account it lists (JOB-ACCOUNT), or one (JOB) for a job that lists none.
  scheduled_jobs = merge([
    for job in local.schedules.jobs : {
      for account in coalescelist(try(job.accounts, []), [""]) :
      (account == "" ? job.name : "${job.name}-${account}") => { job = job, account = account }
    }
  ]...)

  # One scheduled message per scheduler job: the intent envelope (schemas/envelope.schema.json) and the attributes
  # the consumer derives the idempotency key from (schedule + trading day, kept per account), as schedules.yaml
  # describes; `account` routes it to the deployment serving that account.
  scheduled_messages = {
    for key, fire in local.scheduled_jobs : key => {
      data = merge(
        { intent = fire.job.intent, schedule = fire.job.name, params = try(fire.job.params, {}) },
        try({ dryRun = fire.job.dryRun }, {}),
        try({ maxAgeSeconds = fire.job.maxAgeSeconds }, {}),
      )
      attributes = merge(
        { intent = fire.job.intent, schedule = fire.job.name },
        { for name, value in { account = fire.account } : name => value if value != "" },
      )
    }
  }
}

# What a deployment's module needs to create a job: the declaration, its message and the time zone.
locals {
  scheduler_jobs = {
    for key, fire in local.scheduled_jobs : key => merge(fire, {
      message   = local.scheduled_messages[key]
      time_zone = local.schedules.timeZone
    })
  }
}
