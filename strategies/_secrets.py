"""Secret references in source options: where a password or a service-account key comes from.

A plan never holds a secret, only where to read it at run time: `{source: env, name: VAR}` (an
environment variable) or `{source: credential, name: NAME}` (a systemd credential in
$CREDENTIALS_DIRECTORY). The value is read through drd.secret_source when the job runs, kept in
memory only, and never logged.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, model_validator

from drd.fields import secret_name_problem
from drd.secret_source import read_secret


class SecretRef(BaseModel):
    """Where a secret is read from: an environment variable or a systemd credential."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["env", "credential"]
    name: str

    @model_validator(mode="after")
    def _check_name(self) -> Self:
        problem = secret_name_problem(self.source, self.name)
        if problem is not None:
            raise ValueError(f"name: {problem}")
        return self

    def read(self, what: str) -> str:
        """The secret's text (a trailing newline, as credential files often have, removed)."""
        return read_secret(self.source, self.name, what=what).rstrip("\r\n")

    @classmethod
    def parse(cls, text: str) -> SecretRef:
        """`env:VAR` or `credential:NAME` (as in target URLs and on the command line)."""
        source, sep, name = text.partition(":")
        if not sep or source not in ("env", "credential"):
            raise ValueError("expected env:VARIABLE or credential:NAME")
        return cls(source=source, name=name)  # type: ignore[arg-type]
