"""A fine-tuning job's status: OpenAI's values, which are also what the registry stores.

``validating_files`` (created; a worker checks the data against the model's template), ``queued``,
``running``, then one of ``succeeded``, ``failed``, ``cancelled``.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobStatus.VALIDATING, JobStatus.QUEUED, JobStatus.RUNNING)
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
WAITING = (JobStatus.VALIDATING, JobStatus.QUEUED)  # claimable without an owner
