"""The `[jobs]` config section: defaults, the shipped file, and every bad value refused
with the key named."""

from __future__ import annotations

from typing import Any

import pytest

from messageai.config import ConfigError, JobsConfig, load_config, parse_config


def test_the_embedded_default_has_the_jobs_defaults() -> None:
    assert load_config().jobs == JobsConfig()


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"concurrency": 0}, "jobs.concurrency"),
        ({"concurrency": 1.5}, "jobs.concurrency"),
        ({"max_attempts": 0}, "jobs.max_attempts"),
        ({"lease_seconds": 0}, "jobs.lease_seconds"),
        ({"lease_seconds": "30"}, "jobs.lease_seconds"),
        ({"attempt_timeout_seconds": -1.0}, "jobs.attempt_timeout_seconds"),
        ({"backoff_base_seconds": float("nan")}, "jobs.backoff_base_seconds"),
        (
            {"backoff_base_seconds": 10.0, "backoff_max_seconds": 5.0},
            "jobs.backoff_base_seconds: must not be more than backoff_max_seconds",
        ),
        ({"max_payload_bytes": 10}, "jobs.max_payload_bytes"),
        ({"max_pending": 0}, "jobs.max_pending"),
        ({"poll_seconds": 0}, "jobs.poll_seconds"),
        ({"keep_finished_seconds": 0}, "jobs.keep_finished_seconds"),
        ({"workers": 3}, "jobs.workers: unknown key"),
    ],
)
def test_bad_jobs_values_are_refused_naming_the_key(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        parse_config({"jobs": values})
