# Which messages reach this deployment, and which scheduled jobs it runs. Only variables here (no resources), so
# tests/deploy/test_infra.py evaluates it with `terraform console` without providers.
locals {
  # The Pub/Sub filter: a deployment receives the messages addressed to its accounts. The default one receives
  # every message not addressed to another deployment's account: the unaddressed ones, and those for an account (or
  # an alias) nobody's filter names, which it answers unknown_account rather than Pub/Sub dropping them unanswered.
  # The consumer checks the address itself as well (the emulator ignores filters). With no other deployment the
  # default takes everything (no filter). Pub/Sub limits a filter to 256 bytes (checked in pubsub.tf).
  filter = (
    !var.deployment.default ? join(" OR ", [for account in var.deployment.ib_accounts : "attributes.account = \"${account}\""]) :
    length(var.other_accounts) == 0 ? "" :
    "NOT attributes:account OR (${join(" AND ", [for account in var.other_accounts : "attributes.account != \"${account}\""])})"
  )

  # The scheduler jobs it runs: those addressed to one of its accounts, and the unaddressed ones if it is the default.
  jobs = {
    for key, fire in var.scheduled_jobs : key => fire
    if fire.account == "" ? var.deployment.default : contains(var.deployment.ib_accounts, fire.account)
  }
}
