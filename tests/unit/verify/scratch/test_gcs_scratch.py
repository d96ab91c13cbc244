"""The gcs-scratch-bucket scratch kind: what a plan must give, the target it restores into
(naming where the credentials come from, never them), and the rule that it never overlaps the
source's own objects."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from drd.config.guard import refusal
from drd.restore_tests.spec import GCS_SCRATCH_PREFIX, ScratchSpec
from drd.strategies.gcs_bucket import GcsBucketOptions
from drd.verify.scratch.gcs_scratch import scratch_prefix

ENDPOINT = "http://127.0.0.1:4443"


def spec(**fields: Any) -> ScratchSpec:
    return ScratchSpec.model_validate({"kind": "gcs-scratch-bucket", **fields})


def source(**fields: Any) -> GcsBucketOptions:
    base: dict[str, Any] = {
        "name": "uploads",
        "bucket": "media",
        "prefix": "uploads/",
        "endpoint": ENDPOINT,
        "credentials": {"source": "anonymous"},
    }
    return GcsBucketOptions.model_validate({**base, **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"credentials": {"source": "anonymous"}, "endpoint": ENDPOINT}, "bucket"),
        ({"bucket": "scratch"}, "credentials"),
        ({"bucket": "scratch", "credentials": {"source": "anonymous"}}, "loopback"),
        (
            {"bucket": "scratch", "credentials": {"source": "env"}, "endpoint": ENDPOINT},
            "name: field required",
        ),
        (
            {
                "bucket": "scratch",
                "credentials": {"source": "anonymous"},
                "endpoint": "http://10.0.0.1",
            },
            "loopback",
        ),
        ({"bucket": "Bad_Bucket", "credentials": {"source": "anonymous"}}, "bucket"),
        ({"bucket": "b-1", "prefix": "no-slash", "credentials": {"source": "anonymous"}}, "prefix"),
        ({"bucket": "b-1", "dsn": "host=x", "credentials": {"source": "anonymous"}}, "dsn"),
    ],
)
def test_what_the_plan_must_give(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        spec(**fields)
    (error,) = raised.value.errors()
    where = (
        str((error.get("ctx") or {}).get("drd_field", "")) + " " + ".".join(map(str, error["loc"]))
    )
    assert message in where + " " + error["msg"], error


def test_the_target_names_the_credentials_source_only() -> None:
    s = spec(bucket="scratch-b", endpoint=ENDPOINT, credentials={"source": "env", "name": "SA"})
    prefix = scratch_prefix(s, "abc123")
    assert prefix == f"{GCS_SCRATCH_PREFIX}drd-scratch-abc123/"
    target = s.gcs_target(prefix)
    assert target.startswith(f"gs://scratch-b/{prefix}?")
    assert "credentials=env:SA" in target and f"endpoint={ENDPOINT}" in target
    anon = spec(bucket="scratch-b", endpoint=ENDPOINT, credentials={"source": "anonymous"})
    assert "credentials=anonymous" in anon.gcs_target(prefix)


@pytest.mark.parametrize(
    ("scratch", "src", "refused"),
    [
        ({"bucket": "media"}, {}, False),  # drd-restore-tests/ is outside uploads/
        ({"bucket": "media", "prefix": "uploads/tests/"}, {}, True),
        ({"bucket": "media", "prefix": "up/"}, {}, False),
        ({"bucket": "media"}, {"prefix": ""}, True),  # the source is the whole bucket
        ({"bucket": "media", "prefix": ""}, {}, True),
        ({"bucket": "other"}, {"prefix": ""}, False),
        ({"bucket": "media", "prefix": ""}, {"endpoint": "http://127.0.0.1:9999"}, False),
    ],
)
def test_never_the_source_itself(
    scratch: dict[str, Any], src: dict[str, Any], refused: bool
) -> None:
    s = spec(endpoint=ENDPOINT, credentials={"source": "anonymous"}, **scratch)
    found = refusal(s, source(**src))
    assert (found is not None) is refused, found
    if found is not None:
        assert found[0] == "prefix" and "uploads" in found[1]


@pytest.mark.parametrize(
    ("scratch_endpoint", "source_endpoint"),
    [(None, "https://storage.googleapis.com"), ("https://STORAGE.googleapis.com/", None)],
)
def test_google_named_or_not_is_one_service(
    scratch_endpoint: str | None, source_endpoint: str | None
) -> None:
    creds = {"source": "env", "name": "SA"}
    s = spec(bucket="media", prefix="uploads/tests/", endpoint=scratch_endpoint, credentials=creds)
    src = source(endpoint=source_endpoint, credentials=creds)
    assert refusal(s, src) is not None
