"""The scheduled jobs declared in infra/schedules.yaml, as the consumer needs them: which intent each job publishes.

Terraform creates the Cloud Scheduler jobs from the same file, so a message that names a job but carries another
intent did not come from that job.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from consumer.data import SCHEDULES_DECLARATION


def job_intents(path: Path = SCHEDULES_DECLARATION) -> dict[str, str]:
    """{job name: intent} for every declared job."""
    data = yaml.safe_load(path.read_text()) or {}
    return {job["name"]: job["intent"] for job in data.get("jobs", [])}


def job_accounts(path: Path = SCHEDULES_DECLARATION) -> dict[str, list[str]]:
    """{job name: the accounts (ids or aliases) it fans out to} for every job that lists some."""
    data = yaml.safe_load(path.read_text()) or {}
    return {job["name"]: [str(a) for a in job["accounts"]] for job in data.get("jobs", []) if job.get("accounts")}
