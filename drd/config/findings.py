"""Findings: the problems in a config or plan file, each as `file:line: field: message`, and
how YAML problems and pydantic errors become findings.

A FileReport collects the findings of one file. It reads the file through drd.config.yamlsource
(which keeps the line of every value) and validates data with a model, turning each pydantic
error into a finding at the line of the field it is about: a missing field at its mapping, an
unknown one at its key, a `drd.fields.rule` at the field it names. Messages are written for
operators (`expected a duration (e.g. 90s, ...), got a list`, `unknown field (did you mean
'rpo'?)`) and never repeat the offending value.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from drd.config.raw import kind_of
from drd.config.yamlsource import Loc, YamlDocument, YamlSourceError, load_yaml
from drd.fields import NAME_PATTERN


@dataclass(frozen=True)
class Finding:
    """One problem in a config or plan file. str(): `plans/billing.yaml:12: sources[0].dsn:
    field required` (warnings: `file:line: warning: field: message`)."""

    severity: Literal["error", "warning"]
    file: Path
    #: 1-based; None when the problem is with the file as a whole (missing, empty)
    line: int | None
    #: the field path, e.g. "sources[0].dsn"; "" for the file as a whole
    field: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = display_path(self.file)
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.severity == "warning":
            parts.append("warning")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


def display_path(path: Path) -> str:
    """The path relative to the working directory when it is below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _render_loc(loc: Loc) -> str:
    """("sources", 0, "dsn") -> "sources[0].dsn"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# --------------------------------------------------------------------------------------------
# The findings of one file

_M = TypeVar("_M", bound=BaseModel)


@dataclass
class FileReport:
    """The findings for one file, with the YAML document that gives them lines."""

    path: Path
    doc: YamlDocument | None = None
    findings: list[Finding] = field(default_factory=list)
    #: paths whose value YAML could not give (bad tag): validation errors there are noise
    dropped: set[Loc] = field(default_factory=set)

    @property
    def doc_data(self) -> Any:
        return self.doc.data if self.doc else None

    @property
    def has_errors(self) -> bool:
        return any(finding.is_error for finding in self.findings)

    def sorted(self) -> list[Finding]:
        return sorted(self.findings, key=lambda finding: finding.line or 0)

    def read(self, shape: str) -> dict[str, Any] | None:
        """Load the file; its top level as a dict, or None (after reporting why). `shape` says
        what the file should hold."""
        try:
            self.doc = load_yaml(self.path)
        except YamlSourceError as exc:
            self.findings.append(Finding("error", self.path, exc.line, "", exc.message))
            return None
        for problem in self.doc.problems:
            self.findings.append(
                Finding("error", self.path, problem.line, _render_loc(problem.loc), problem.message)
            )
            if problem.value_dropped:
                self.dropped.add(problem.loc)
        data = self.doc.data
        if data is None:
            self.findings.append(Finding("error", self.path, None, "", f"empty file: {shape}"))
            return None
        if not isinstance(data, dict):
            self.error((), f"got {kind_of(data)} at the top level: {shape}")
            return None
        return data

    def error(self, loc: Loc, message: str, *, missing: bool = False, key: bool = False) -> None:
        self._add("error", loc, message, missing=missing, key=key)

    def warning(self, loc: Loc, message: str) -> None:
        self._add("warning", loc, message)

    def _add(
        self,
        severity: Literal["error", "warning"],
        loc: Loc,
        message: str,
        *,
        missing: bool = False,
        key: bool = False,
    ) -> None:
        line = self.doc.line_of(loc, missing=missing, key=key) if self.doc else None
        self.findings.append(Finding(severity, self.path, line, _render_loc(loc), message))

    def validate_model(self, model: type[_M], data: Any, prefix: Loc = ()) -> _M | None:
        """model.model_validate(data), its errors reported at `prefix` + their location."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = _data_loc(data, tuple(error["loc"]))
                if error["type"] == "drd_rule":
                    loc += _field_loc(str((error.get("ctx") or {})["drd_field"]))
                full = (*prefix, *loc)
                if any(full[: len(dropped)] == dropped for dropped in self.dropped):
                    continue
                self.error(
                    full,
                    _message(error, model, loc),
                    missing=error["type"] == "missing",
                    key=error["type"] == "extra_forbidden",
                )
            return None


# --------------------------------------------------------------------------------------------
# Pydantic errors: where they are and what they say


def _data_loc(data: Any, loc: tuple[str | int, ...]) -> Loc:
    """A pydantic error location as a path into the data: parts that are pydantic's own
    (union members, validator names) are dropped; a missing field's name is kept."""
    kept: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        if isinstance(current, dict) and isinstance(part, str):
            if part in current:
                kept.append(part)
                current = current[part]
            elif index == len(loc) - 1:
                kept.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            kept.append(part)
            current = current[part]
    return tuple(kept)


def _field_loc(dotted: str) -> Loc:
    return tuple(int(part) if part.isdigit() else part for part in dotted.split(".") if part)


_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "dict": "a mapping",
    "model": "a mapping",
    "list": "a list",
    "path": "a path",
    "date": "a date written YYYY-MM-DD",
    "timedelta": "a duration (e.g. 90s, 30m, 6h, 14d or 1d12h)",
}


def _message(error: ErrorDetails, model: type[BaseModel], loc: Loc) -> str:
    """An operator-facing message for a pydantic error; never repeats the offending value."""
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return _unknown_field_message(model, loc)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind == "drd_rule":
        return error["msg"]
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return "must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a-z or 0-9"
        return f"must match the pattern {ctx.get('pattern')}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "too_short":
        count = ctx.get("min_length")
        return f"needs at least {count} item{'s' if count != 1 else ''}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    prefix = kind.split("_")[0]
    if prefix in _EXPECTED and (kind.endswith("_type") or "parsing" in kind):
        return f"expected {_EXPECTED[prefix]}, got {kind_of(error['input'])}"
    text = error["msg"]
    return text[:1].lower() + text[1:]


#: the words that make a field name look like a secret (an unknown field named so is refused
#: as a secret, not merely as unknown)
_SECRET_WORDS = {
    "key",
    "keys",
    "keyfile",
    "apikey",
    "privatekey",
    "secret",
    "secrets",
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "token",
}
_NOT_IN_CONFIG_MESSAGE = (
    "looks like a secret: config files must not hold keys, passwords or tokens (keys come from "
    "keys.source: env, credential or stdin)"
)


def _looks_secret(field_name: str) -> bool:
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", field_name.lower()))


def _unknown_field_message(model: type[BaseModel], loc: Loc) -> str:
    field_name = str(loc[-1]) if loc else ""
    if loc[:1] == ("keys",) and len(loc) == 2:
        return (
            "unknown field: there is deliberately no way to give a key or a key file in the "
            "config (keys.source: env, credential or stdin)"
        )
    if _looks_secret(field_name):
        return _NOT_IN_CONFIG_MESSAGE
    known = _fields_at(model, loc[:-1])
    if not known:
        return "unknown field"
    close = difflib.get_close_matches(field_name, known, n=1)
    if close:
        return f"unknown field (did you mean {close[0]!r}?)"
    return f"unknown field (expected one of: {', '.join(known)})"


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The field names of the model found at `loc` inside `model` (following nested models
    and lists of them)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            current = _unwrap(current, list)
        elif isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part)
            current = _unwrap(info.annotation, None) if info else None
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any, container: type | None) -> Any:
    """The model inside `X | None` / Annotated[X, ...] (and list[X] when container is list)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0], container)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _unwrap(members[0], container) if len(members) == 1 else None
    if container is not None:
        return typing.get_args(annotation)[0] if origin is container else None
    return annotation
