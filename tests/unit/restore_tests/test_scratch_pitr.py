"""restore_test.scratch `pitr:` of a cloudsql-scratch-project: which projects it takes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from drd.config.guard import refusal
from drd.restore_tests.spec import ScratchSpec
from drd.strategies.cloudsql import CloudSqlOptions

KIND = "cloudsql-scratch-project"


def spec(**fields: Any) -> ScratchSpec:
    return ScratchSpec.model_validate({"kind": KIND, **fields})


def refused(**fields: Any) -> str:
    with pytest.raises(ValidationError) as exc:
        ScratchSpec.model_validate(fields)
    return str(exc.value)


def test_a_clone_in_the_source_project_needs_no_scratch_project() -> None:
    assert spec(pitr="clone-in-source-project").project is None


def test_a_clone_in_the_source_project_refuses_a_project_saying_why() -> None:
    message = refused(kind=KIND, pitr="clone-in-source-project", project="acme-scratch")
    assert "project" in message
    assert "does not apply with pitr: clone-in-source-project" in message


def test_a_cross_project_clone_needs_the_scratch_project() -> None:
    assert "field required for kind: cloudsql-scratch-project" in refused(kind=KIND, pitr="clone")
    assert spec(pitr="clone", project="acme-scratch").project == "acme-scratch"


def test_pitr_applies_only_to_cloud_sql_and_takes_only_its_modes() -> None:
    assert "only applies to kind: cloudsql-scratch-project" in refused(
        kind="ephemeral-postgres", pitr="clone"
    )
    assert "pitr" in refused(kind=KIND, pitr="restore", project="acme-scratch")


def test_a_cross_project_clone_into_the_source_project_is_still_refused() -> None:
    source = CloudSqlOptions.model_validate(
        {
            "name": "ledger",
            "kind": "cloudsql",
            "project": "acme-prod",
            "instance": "billing-pg",
            "modes": ["managed"],
            "credentials": {"source": "env", "name": "SA_JSON"},
        }
    )
    found = refusal(spec(pitr="clone", project="acme-prod"), source)
    assert found is not None and found[0] == "project"
    assert "say pitr: clone-in-source-project instead" in found[1]
    assert refusal(spec(pitr="clone-in-source-project"), source) is None
