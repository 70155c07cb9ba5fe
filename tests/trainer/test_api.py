"""Kept only so that ``from tests.trainer.test_api import ...`` (tests/security/test_trainer_inputs.py)
still works: the helpers live in tests/trainer/api/requests.py and the API's tests in
tests/trainer/api/test_routes_files.py and test_routes_jobs.py. Remove once nothing imports it."""

from tests.trainer.api.requests import (
    GOOD_DPO,
    GOOD_SFT,
    _job,
    assert_refused,
    lines,
    snapshot,
    upload,
)

__all__ = ["GOOD_DPO", "GOOD_SFT", "_job", "assert_refused", "lines", "snapshot", "upload"]
