"""The daemon config (drd.yaml) and the DR plans it lists: models, loading and validation.

Everything is loaded through `load_config` (raises ConfigError listing every error) or checked
through `validate` (returns every error and warning as Findings). Both read the config and every
plan completely before they judge, so one run shows all the mistakes, each as
`file:line: field: message`.

How validation is split:
- YAML: drd.config.yamlsource keeps the line of every value (and reports duplicate keys, bad tags).
- Shape: pydantic models, one per section. A model checks its own fields, and the rules that
  relate fields of the same section (a model validator raises `_rule(field, message)`, which
  names the field the error is about).
- Rules that relate sections, files, or today's date (schedule vs RPO, plan regions vs config
  regions, unique names, review age) and all warnings live in the `_check_*` functions below.
Sections are validated one by one, so a mistake in one section does not hide mistakes in others.

Secrets: no field holds a key, password or token. Keys come from `keys.source` (env,
credential, stdin) and nothing else; a field that looks like a secret is an error, and a DSN
with an inline password is a warning. Messages never repeat a value that could be a secret.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit

from croniter import CroniterBadDateError, croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from drd.config.yamlsource import Loc, YamlDocument, YamlSourceError, load_yaml
from drd.durations import format_duration, parse_duration, parse_size
from drd.errors import ConfigError
from drd.restore_tests.spec import (
    CHECKS_FOR_SOURCE,
    SCRATCH_FOR_SOURCE,
    CheckSpec,
    ScratchSpec,
    default_scratch,
)
from drd.storage.regions import is_loopback_host
from drd.strategies import SourceOptions, get_strategy
from drd.strategies.base import NAME_PATTERN

if TYPE_CHECKING:
    from drd.storage.regions import RegionSpec

__all__ = [
    "ApiConfig",
    "Config",
    "DaemonConfig",
    "Finding",
    "GcsCredentials",
    "KeysConfig",
    "LogConfig",
    "Plan",
    "PlanStorage",
    "RegionConfig",
    "RestoreTest",
    "Retention",
    "Schedule",
    "Targets",
    "load_config",
    "validate",
]

#: The security page promises that backups are destroyed within 14 days.
MAX_RETENTION = timedelta(days=14)
#: Plans must be reviewed at least annually; older reviews get a warning.
MAX_REVIEW_AGE = timedelta(days=366)
#: GCS resumable uploads need chunks that are a multiple of 256 KiB.
GCS_CHUNK_QUANTUM = 256 * 1024


# --------------------------------------------------------------------------------------------
# Findings


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
        where = _display_path(self.file)
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.severity == "warning":
            parts.append("warning")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


def _display_path(path: Path) -> str:
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
# Field types


def _rule(field_path: str, message: str) -> PydanticCustomError:
    """The error a model validator raises about one of its fields ("min_copies",
    "credentials.source"): the loader reports it at that field's line."""
    return PydanticCustomError("drd_rule", message, {"drd_field": field_path})


def _to_duration(value: Any) -> timedelta:
    return parse_duration(value)


def _to_size(value: Any) -> int:
    return parse_size(value)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


def _to_date(value: Any) -> date:
    parsed = _as_date(value)
    if parsed is None:
        raise ValueError("expected a date written YYYY-MM-DD")
    return parsed


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


#: plan, source and region names: [a-z0-9][a-z0-9_-]{0,62}
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
#: "90s", "30m", "6h", "14d", "1d12h", or an integer number of seconds
Duration = Annotated[timedelta, BeforeValidator(_to_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_to_duration), AfterValidator(_positive)]
#: "16MiB", "512KiB", "10MB", or an integer number of bytes
Size = Annotated[int, BeforeValidator(_to_size)]
Day = Annotated[date, BeforeValidator(_to_date)]
NonEmptyStr = Annotated[str, Field(min_length=1)]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,254}")


def _check_secret_name(source: str, name: str | None, where: str) -> None:
    """The rules for `{source, name}` pairs that say where a secret comes from."""
    if source in ("env", "credential") and name is None:
        what = "environment variable" if source == "env" else "systemd credential"
        raise _rule(where, f"field required with source: {source} (the {what} to read)")
    if source not in ("env", "credential") and name is not None:
        raise _rule(where, f"not used with source: {source}")
    if source == "env" and name is not None and not _ENV_NAME.fullmatch(name):
        raise _rule(where, "not an environment variable name (letters, digits and '_')")
    if source == "credential" and name is not None and not _CREDENTIAL_NAME.fullmatch(name):
        raise _rule(where, "not a credential name (letters, digits, '_', '-', '.' and '@')")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Daemon config models


class KeysConfig(_Model):
    """Where the daemon gets its keys. Deliberately there is no way to give a key, or the path of
    a key file, in the config: env (a variable), credential (a systemd credential) or stdin."""

    source: Literal["env", "credential", "stdin"] = "env"
    #: the environment variable or credential name; required for env/credential
    name: str | None = None

    @model_validator(mode="after")
    def _name_fits_source(self) -> Self:
        _check_secret_name(self.source, self.name, "name")
        return self


class ApiToken(_Model):
    """A bearer token the API accepts, stored only as its SHA-256 (`drd token` makes one)."""

    name: Name
    role: Literal["viewer", "operator", "coordinator"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ApiConfig(_Model):
    #: "host:port" ("[::1]:9187" for IPv6); port 0 picks a free port
    listen: str = "127.0.0.1:9187"
    #: who may call the API; tokens themselves are never in the config, only their hashes
    tokens: list[ApiToken] = Field(default_factory=list)
    #: read-only endpoints (status, drill reports) without a token
    public_read: bool = False
    #: /metrics without a token (Prometheus scrapes it)
    public_metrics: bool = True

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, value: list[ApiToken]) -> list[ApiToken]:
        names = [t.name for t in value]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        if len({t.sha256 for t in value}) != len(value):
            raise ValueError("two tokens have the same hash")
        return value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        _split_listen(value)
        return value

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected host:port, e.g. 127.0.0.1:9187")
    return host, int(port)


class LogConfig(_Model):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class GcsCredentials(_Model):
    """How a gs:// region authenticates: a systemd credential or an environment variable
    (holding a service account key file's path or contents), or anonymous (emulators only)."""

    source: Literal["credential", "env", "anonymous"]
    name: str | None = None

    @model_validator(mode="after")
    def _name_fits_source(self) -> Self:
        _check_secret_name(self.source, self.name, "name")
        return self


#: 3-63 characters, or up to 222 with dots
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def _parse_region_url(url: str) -> tuple[str, str, str]:
    """("file", path, "") / ("gs", bucket, prefix) / ("mem", name, ""); ValueError if invalid.

    file: URLs are `file:PATH` (relative to the config's directory unless absolute),
    `file:///PATH` or `file://localhost/PATH`; PATH is percent-decoded, as drd.storage.registry
    does."""
    scheme, sep, rest = url.partition(":")
    if "?" in rest or "#" in rest:
        raise ValueError("a region URL cannot have a query or fragment ('?', '#')")
    if scheme == "file" and sep:
        path = unquote(rest)
        if rest.startswith("//"):
            host, _, tail = rest[2:].partition("/")
            if host not in ("", "localhost"):
                raise ValueError("a file: URL names a local path; it cannot name a host")
            path = "/" + unquote(tail)
        if path in ("", "/"):
            raise ValueError("a file: URL needs a directory, e.g. file:.drd/regions/a")
        return "file", path, ""
    if scheme == "gs" and rest.startswith("//"):
        bucket, _, prefix = rest[2:].partition("/")
        if not _GCS_BUCKET.fullmatch(bucket):
            raise ValueError("not a valid GCS bucket name (gs://BUCKET/PREFIX)")
        prefix = prefix.strip("/")
        if "//" in prefix:
            raise ValueError("the object prefix has an empty path segment ('//')")
        return "gs", bucket, prefix
    if scheme == "mem" and rest.startswith("//") and rest[2:]:
        return "mem", rest[2:], ""
    raise ValueError("unsupported region URL: use file:PATH, gs://BUCKET/PREFIX or mem://NAME")


DEFAULT_GCS_RETRY_DEADLINE = timedelta(seconds=15)


class RegionConfig(_Model):
    """One region: an independent place to keep backup copies.

    url: `file:PATH` (a local directory; the loader makes PATH absolute), `gs://BUCKET/PREFIX`,
    or `mem://NAME` (in memory, for tests and demos). The other fields are for gs:// only.
    """

    name: Name
    url: str
    #: GCP project of the bucket (gs:// only; required there)
    project: NonEmptyStr | None = None
    #: storage API endpoint, e.g. a fake-gcs-server at http://127.0.0.1:4443 (gs:// only)
    endpoint: str | None = None
    #: required for gs://
    credentials: GcsCredentials | None = None
    #: read/write chunk size in bytes (for gs:// a multiple of 256KiB); None: backend default
    chunk_size: Size | None = None
    #: per-request timeout (gs:// only); None: backend default (60s)
    timeout: PositiveDuration | None = None
    #: how long transient failures of one request are retried (gs:// only); None: 15s.
    #: Kept short: a region that is down should be reported, not waited for.
    retry_deadline: PositiveDuration | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        _parse_region_url(value)
        return value

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("invalid port in the endpoint URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http(s) URL, e.g. http://127.0.0.1:4443")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError("expected scheme://host[:port] only, no path, query or user")
        return value

    @model_validator(mode="after")
    def _fields_fit_scheme(self) -> Self:
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise _rule("chunk_size", "must be more than 0 bytes")
        if self.scheme != "gs":
            for name in ("project", "endpoint", "credentials", "timeout", "retry_deadline"):
                if getattr(self, name) is not None:
                    raise _rule(name, "only applies to gs:// regions")
            return self
        if self.project is None:
            raise _rule("project", "field required for gs:// regions")
        if self.credentials is None:
            raise _rule(
                "credentials", "field required for gs:// regions (source: credential or env)"
            )
        endpoint = urlsplit(self.endpoint) if self.endpoint else None
        loopback = endpoint is not None and is_loopback_host(endpoint.hostname or "")
        if self.credentials.source == "anonymous" and not loopback:
            raise _rule(
                "credentials.source",
                "anonymous is only allowed with an endpoint on a loopback address (an emulator)",
            )
        if endpoint is not None and endpoint.scheme == "http" and not loopback:
            raise _rule("endpoint", "plain http is only allowed to a loopback address")
        if self.chunk_size is not None and self.chunk_size % GCS_CHUNK_QUANTUM:
            raise _rule("chunk_size", "must be a multiple of 256KiB for gs:// regions")
        return self

    @property
    def scheme(self) -> Literal["file", "gs", "mem"]:
        scheme = _parse_region_url(self.url)[0]
        assert scheme in ("file", "gs", "mem")
        return scheme  # type: ignore[return-value]

    @property
    def local_path(self) -> Path | None:
        """The directory of a file: region (absolute once loaded); None for other schemes."""
        scheme, path, _ = _parse_region_url(self.url)
        return Path(path) if scheme == "file" else None

    @property
    def bucket(self) -> str | None:
        scheme, bucket, _ = _parse_region_url(self.url)
        return bucket if scheme == "gs" else None

    @property
    def prefix(self) -> str:
        """The object prefix inside the bucket, without slashes at either end ("" if none)."""
        return _parse_region_url(self.url)[2]

    def spec(self) -> RegionSpec:
        """What drd.storage.regions.open_region takes."""
        from drd.storage.regions import RegionSpec

        credentials: dict[str, str] = {}
        if self.credentials is not None:
            credentials["source"] = self.credentials.source
            if self.credentials.name is not None:
                credentials["name"] = self.credentials.name
        options: dict[str, Any] = {}
        if self.chunk_size is not None:
            options["chunk_size"] = self.chunk_size
        if self.timeout is not None:
            options["timeout"] = self.timeout.total_seconds()
        if self.scheme == "gs":
            deadline = self.retry_deadline or DEFAULT_GCS_RETRY_DEADLINE
            options["retry_deadline"] = deadline.total_seconds()
        return RegionSpec(
            name=self.name,
            url=self.url,
            endpoint=self.endpoint,
            project=self.project,
            credentials=credentials,
            options=options,
        )


class ScrubConfig(_Model):
    """Re-reading stored copies to find silent damage (drd.daemon.scrub_loop, `drd check`)."""

    enabled: bool = True
    #: every copy is read and checked (size, ciphertext digest) at least this often
    period: PositiveDuration = timedelta(days=7)
    #: a cost cap: at most this many bytes read per hour, over every region
    bytes_per_hour: Annotated[Size, Field(gt=0)] = 20 * 1024**3


class DaemonConfig(_Model):
    """How the daemon runs jobs."""

    #: backups and restore tests running at the same time, over all plans
    max_concurrent_jobs: Annotated[StrictInt, Field(ge=1)] = 2
    #: a job still running after this long is cancelled and counted as failed
    job_timeout: PositiveDuration = timedelta(hours=6)
    #: extra attempts after a transient failure (storage timeouts, 5xx), with backoff
    retries: Annotated[StrictInt, Field(ge=0)] = 2
    #: the first backoff; it doubles on each retry
    retry_wait: PositiveDuration = timedelta(seconds=30)
    #: on SIGTERM, how long running jobs get to finish before they are cancelled
    shutdown_grace: PositiveDuration = timedelta(seconds=30)
    #: re-reading stored copies on a schedule
    scrub: ScrubConfig = Field(default_factory=ScrubConfig)


def _default_keys() -> KeysConfig:
    return KeysConfig(source="env", name="DRD_KEYS")


class _ConfigFile(_Model):
    """The top level of drd.yaml; regions are validated one by one by RegionConfig."""

    state_dir: NonEmptyStr = ".drd/state"
    plans: Annotated[list[NonEmptyStr], Field(min_length=1)]
    keys: KeysConfig = Field(default_factory=_default_keys)
    api: ApiConfig = Field(default_factory=ApiConfig)
    regions: Annotated[list[dict[str, Any]], Field(min_length=1)]
    log: LogConfig = Field(default_factory=LogConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)


# --------------------------------------------------------------------------------------------
# Plan models


class Targets(_Model):
    #: recovery point objective: the most data (time) a restore may lose
    rpo: PositiveDuration
    #: recovery time objective: how long a restore may take
    rto: PositiveDuration


class Schedule(_Model):
    """When backups run: exactly one of `every` (an interval) or `cron` (a croniter
    expression, evaluated in UTC). `jitter` bounds the fixed offset drd.daemon.schedule gives each
    source, so that the sources of a plan do not all start at the same second."""

    every: PositiveDuration | None = None
    cron: str | None = None
    jitter: Duration = timedelta(0)

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError("not a valid cron expression (e.g. '0 */4 * * *')")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.every is None) == (self.cron is None):
            raise _rule("", "give exactly one of 'every' or 'cron'")
        if self.every is not None and self.jitter >= self.every:
            raise _rule("jitter", "must be shorter than the interval ('every')")
        return self


class PlanStorage(_Model):
    #: names of regions defined in the daemon config; at least 2, distinct
    regions: list[Name]
    #: a backup is complete once stored in this many regions
    min_copies: Annotated[StrictInt, Field(ge=1)]

    @model_validator(mode="after")
    def _enough_regions(self) -> Self:
        for index, region in enumerate(self.regions):
            if region in self.regions[:index]:
                first = self.regions.index(region)
                raise _rule(f"regions.{index}", f"region listed twice (also regions[{first}])")
        if len(self.regions) < 2:
            raise _rule(
                "regions", "at least 2 regions required (a plan must survive losing a region)"
            )
        if self.min_copies > len(self.regions):
            raise _rule(
                "min_copies",
                f"{self.min_copies} copies cannot be made in {len(self.regions)} regions",
            )
        return self


class Retention(_Model):
    max_age: PositiveDuration = MAX_RETENTION

    @field_validator("max_age")
    @classmethod
    def _within_promise(cls, value: timedelta) -> timedelta:
        if value > MAX_RETENTION:
            raise ValueError(
                f"{format_duration(value)} is longer than 14d: the security page promises "
                "that backups are destroyed within 14 days"
            )
        return value


class RestoreTest(_Model):
    """How each source's backups are proven restorable (drd.restore_tests.spec documents the
    scratch and checks entries)."""

    every: PositiveDuration = timedelta(hours=24)
    #: the whole test (scratch set-up, fetch, restore, checks); then it is stopped and cleaned up
    timeout: PositiveDuration = timedelta(minutes=30)
    #: also test one randomly chosen older complete backup on each run
    also_random_older: bool = False
    #: where a source is restored to, by source name or by source kind (a name wins)
    scratch: dict[str, ScratchSpec] = Field(default_factory=dict)
    #: declarative checks, by source name
    checks: dict[str, list[CheckSpec]] = Field(default_factory=dict)

    def scratch_for(self, source: SourceOptions) -> ScratchSpec:
        spec = self.scratch.get(source.name) or self.scratch.get(source.kind)
        return spec or default_scratch(source.kind)

    def checks_for(self, source_name: str) -> list[CheckSpec]:
        return list(self.checks.get(source_name, []))


class _PlanFile(_Model):
    """The top level of a plan file; sections are validated one by one by their own models."""

    name: Name
    owner: NonEmptyStr
    reviewed_on: Day
    targets: dict[str, Any]
    schedule: dict[str, Any]
    storage: dict[str, Any]
    retention: dict[str, Any] = Field(default_factory=dict)
    restore_test: dict[str, Any] = Field(default_factory=dict)
    sources: Annotated[list[dict[str, Any]], Field(min_length=1)]


#: the plan sections validated by their own model, and whether the section may be left out
_PLAN_SECTIONS: dict[str, tuple[type[_Model], bool]] = {
    "targets": (Targets, False),
    "schedule": (Schedule, False),
    "storage": (PlanStorage, False),
    "retention": (Retention, True),
    "restore_test": (RestoreTest, True),
}


class Plan(_Model):
    """A validated DR plan. Built by the loader only (rules that need the daemon config or
    today's date are not checked when a Plan is constructed directly)."""

    name: Name
    owner: NonEmptyStr
    reviewed_on: date
    targets: Targets
    schedule: Schedule
    storage: PlanStorage
    retention: Retention = Retention()
    restore_test: RestoreTest = RestoreTest()
    #: each source validated by its strategy's Options model (a SourceOptions subclass);
    #: relative Path fields are made absolute against the daemon config's directory
    sources: list[SerializeAsAny[SourceOptions]]
    #: the plan file
    path: Path

    def source(self, name: str) -> SourceOptions:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(f"plan {self.name!r} has no source {name!r}")


class Config(_Model):
    """The loaded daemon config with its plans. Paths are absolute."""

    #: the config file
    path: Path
    state_dir: Path
    keys: KeysConfig
    api: ApiConfig
    log: LogConfig
    daemon: DaemonConfig
    regions: list[RegionConfig]
    plans: list[Plan]
    #: warnings found while loading (errors make load_config raise instead)
    warnings: list[Finding] = Field(default_factory=list)

    def region(self, name: str) -> RegionConfig:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(f"no region {name!r} in {self.path}")

    def plan(self, name: str) -> Plan:
        for plan in self.plans:
            if plan.name == name:
                return plan
        raise KeyError(f"no plan {name!r} in {self.path}")


# --------------------------------------------------------------------------------------------
# Entry points


def load_config(path: Path, *, today: date | None = None) -> Config:
    """Load drd.yaml and every plan it lists. Raises ConfigError whose message has one line per
    error (`file:line: field: message`); warnings are in Config.warnings."""
    findings, config = _load(path, today or date.today())
    errors = [finding for finding in findings if finding.is_error]
    if errors or config is None:
        raise ConfigError("\n".join(str(finding) for finding in errors))
    return config


def validate(config_path: Path, *, today: date | None = None) -> list[Finding]:
    """Every error and warning in the config and its plans (empty: all is well)."""
    return _load(config_path, today or date.today())[0]


def _load(config_path: Path, today: date) -> tuple[list[Finding], Config | None]:
    config_path = _normalized(config_path)
    base = config_path.parent
    report = _FileReport(config_path)
    raw = report.read("a daemon config is a mapping with regions, plans, keys, ...")
    if raw is None:
        return report.sorted(), None

    header = report.validate_model(_ConfigFile, raw)
    regions = _load_regions(report, raw.get("regions"), base)
    _check_secret_values(report, raw)

    region_names = {
        entry["name"]
        for entry in _list(raw.get("regions"))
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    }
    plan_patterns = raw.get("plans")
    plan_files: list[Path] = []
    if isinstance(plan_patterns, list):
        plan_files = _find_plan_files(report, plan_patterns, base)

    findings = report.sorted()
    plans: list[Plan] = []
    names: dict[str, Path] = {}
    for plan_file in plan_files:
        plan_report = _FileReport(plan_file)
        plan = _load_plan(plan_report, config_path, region_names, today)
        if plan is not None:
            plans.append(plan)
        name = plan.name if plan else _get(plan_report.doc_data, "name")
        if isinstance(name, str) and name in names:
            plan_report.error(("name",), f"plan name already used by {_display_path(names[name])}")
        elif isinstance(name, str):
            names[name] = plan_file
        findings.extend(plan_report.sorted())

    if header is None or any(finding.is_error for finding in findings):
        return findings, None
    config = Config(
        path=config_path,
        state_dir=_normalized(base / header.state_dir),
        keys=header.keys,
        api=header.api,
        log=header.log,
        daemon=header.daemon,
        regions=regions,
        plans=plans,
        warnings=findings,
    )
    return findings, config


def _load_regions(report: _FileReport, raw_regions: Any, base: Path) -> list[RegionConfig]:
    regions: list[RegionConfig] = []
    seen_names: dict[str, int] = {}
    seen_locations: dict[tuple[str, ...], int] = {}
    for index, entry in enumerate(_list(raw_regions)):
        if not isinstance(entry, dict):
            continue  # reported by _ConfigFile
        loc: Loc = ("regions", index)
        name = entry.get("name")
        if isinstance(name, str) and name in seen_names:
            report.error(
                (*loc, "name"), f"duplicate region name (also regions[{seen_names[name]}])"
            )
        elif isinstance(name, str):
            seen_names[name] = index
        region = report.validate_model(RegionConfig, entry, loc)
        if region is None:
            continue
        if region.scheme == "file":
            assert region.local_path is not None
            absolute = _normalized(base / region.local_path)
            region = region.model_copy(update={"url": f"file:{quote(str(absolute))}"})
        where = _location(region)
        if where in seen_locations:
            report.error(
                (*loc, "url"),
                f"same location as regions[{seen_locations[where]}]: not a separate copy",
            )
        seen_locations.setdefault(where, index)
        if region.scheme == "mem":
            report.warning(
                (*loc, "url"), "an in-memory region loses its backups when the daemon stops"
            )
        regions.append(region)
    return regions


def _location(region: RegionConfig) -> tuple[str, ...]:
    """What two regions must not share: a directory, a bucket (at one endpoint), a memory."""
    scheme, where, _prefix = _parse_region_url(region.url)
    return (scheme, where, region.endpoint or "") if scheme == "gs" else (scheme, where)


def _find_plan_files(report: _FileReport, patterns: list[Any], base: Path) -> list[Path]:
    """The plan files named by `plans:` (paths or globs, relative to the config's directory)."""
    files: list[Path] = []
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            continue  # reported by _ConfigFile
        if any(char in pattern for char in "*?["):
            matches = [
                _normalized(base / match)
                for match in sorted(glob.glob(pattern, root_dir=base, recursive=True))
                if (base / match).is_file()
            ]
            if not matches:
                report.error(("plans", index), "matches no plan file")
        else:
            path = _normalized(base / pattern)
            matches = [path]
            if path.is_dir():
                report.error(("plans", index), "is a directory (use a glob like plans/*.yaml)")
                matches = []
            elif not path.exists():
                report.error(("plans", index), "no such file")
                matches = []
        files.extend(match for match in matches if match not in files)
    return files


def _load_plan(
    report: _FileReport, config_path: Path, region_names: set[str], today: date
) -> Plan | None:
    raw = report.read(
        "a DR plan is a mapping with name, owner, reviewed_on, targets, schedule, storage "
        "and sources"
    )
    if raw is None:
        return None
    header = report.validate_model(_PlanFile, raw)
    sections: dict[str, Any] = {}
    for key, (model, optional) in _PLAN_SECTIONS.items():
        if key not in raw and optional:
            sections[key] = model()
        elif isinstance(raw.get(key), dict):
            sections[key] = report.validate_model(model, raw[key], (key,))
    sources = _load_sources(report, raw.get("sources"), config_path.parent)

    _check_review(report, raw.get("reviewed_on"), today)
    _check_schedule(report, sections.get("schedule"), sections.get("targets"), today)
    _check_plan_regions(report, _get(raw, "storage", "regions"), region_names, config_path)
    _check_restore_test(report, sections.get("restore_test"), sections.get("targets"))
    _check_source_names(report, raw.get("sources"))
    _check_dsn_passwords(report, raw.get("sources"))
    _check_secret_values(report, raw)
    _check_restore_test_sources(report, sections.get("restore_test"), sources, config_path.parent)

    if header is None or report.has_errors or None in sections.values():
        return None
    sections["restore_test"] = _absolute_scratch_dirs(sections["restore_test"], config_path.parent)
    return Plan(
        name=header.name,
        owner=header.owner,
        reviewed_on=header.reviewed_on,
        sources=sources,
        path=report.path,
        **sections,
    )


def _load_sources(report: _FileReport, raw_sources: Any, base: Path) -> list[SourceOptions]:
    sources: list[SourceOptions] = []
    for index, entry in enumerate(_list(raw_sources)):
        if not isinstance(entry, dict):
            continue  # reported by _PlanFile
        loc: Loc = ("sources", index)
        kind = entry.get("kind")
        if "kind" not in entry:
            report.error((*loc, "kind"), "field required", missing=True)
            continue
        if not isinstance(kind, str):
            report.error((*loc, "kind"), f"expected a string, got {_kind_of(kind)}")
            continue
        try:
            strategy = get_strategy(kind)
        except ValueError as exc:  # unknown kind; the message lists the known ones
            report.error((*loc, "kind"), str(exc))
            continue
        options = report.validate_model(strategy.Options, entry, loc)
        if options is not None:
            sources.append(_absolute_paths(options, base))
    return sources


def _absolute_paths(options: SourceOptions, base: Path) -> SourceOptions:
    """Relative Path fields of a source, made absolute against the config's directory."""
    update = {
        name: _normalized(base / value)
        for name, value in options
        if isinstance(value, Path) and not value.is_absolute()
    }
    return options.model_copy(update=update) if update else options


# --------------------------------------------------------------------------------------------
# Rules across sections, files and time; warnings


def _check_review(report: _FileReport, raw_reviewed_on: Any, today: date) -> None:
    reviewed_on = _as_date(raw_reviewed_on)
    if reviewed_on is None:
        return
    if reviewed_on > today:
        report.error(("reviewed_on",), f"{reviewed_on} is in the future (today is {today})")
    elif today - reviewed_on > MAX_REVIEW_AGE:
        report.warning(
            ("reviewed_on",),
            f"last reviewed {(today - reviewed_on).days} days ago: plans must be reviewed at "
            "least annually",
        )


def _check_schedule(
    report: _FileReport, schedule: Schedule | None, targets: Targets | None, today: date
) -> None:
    if schedule is None or targets is None:
        return
    rpo = targets.rpo
    if schedule.every is not None:
        if schedule.every > rpo:
            report.error(
                ("schedule", "every"),
                f"schedule cannot meet the RPO target: backups every "
                f"{format_duration(schedule.every)}, but rpo is {format_duration(rpo)}",
            )
    elif schedule.cron is not None:
        start = datetime.combine(today, time())
        try:
            gap = _cron_gap_over(schedule.cron, rpo, start)
        except CroniterBadDateError:
            report.error(("schedule", "cron"), "the cron expression never fires")
            return
        if gap is not None:
            report.error(
                ("schedule", "cron"),
                f"schedule cannot meet the RPO target: backups up to {format_duration(gap)} "
                f"apart, but rpo is {format_duration(rpo)}",
            )


def _cron_gap_over(expression: str, limit: timedelta, start: datetime) -> timedelta | None:
    """A gap between consecutive firings of `expression` longer than `limit` in the year after
    `start`, if there is one. Gaps are checked one by one for the first 1000 steps (of up to
    `limit` each); over the whole year, gaps longer than `limit` + 1 day are found as well."""
    firings = croniter(expression, start)
    horizon = start + timedelta(days=366)
    fired: datetime = firings.get_next(datetime)
    for _ in range(1000):
        if fired >= horizon:
            break
        following: datetime = firings.get_next(datetime)
        if following - fired > limit:
            return following - fired
        # Skip to the last firing within `limit` after this one: every gap in between is
        # shorter than `limit`, so only the gap after that firing is left to check.
        firings.set_current(fired + limit, force=True)
        fired = max(following, firings.get_prev(datetime))
        firings.set_current(fired, force=True)
    day = start
    while day < horizon:  # seasonal gaps: "0 */4 * 1-6 *" stops firing in July
        firings.set_current(day, force=True)
        following = firings.get_next(datetime)
        if following - day > limit:
            firings.set_current(day, force=True)
            return following - firings.get_prev(datetime)
        day += timedelta(days=1)
    return None


def _check_plan_regions(
    report: _FileReport, raw_regions: Any, known: set[str], config_path: Path
) -> None:
    """Every region a plan names is defined in the daemon config (checked on the raw list, so
    that it is reported even when another storage rule failed)."""
    for index, region in enumerate(_list(raw_regions)):
        if isinstance(region, str) and region not in known:
            defined = ", ".join(sorted(known)) or "none"
            report.error(
                ("storage", "regions", index),
                f"unknown region {region!r} ({_display_path(config_path)} defines: {defined})",
            )


def _check_restore_test(
    report: _FileReport, restore_test: RestoreTest | None, targets: Targets | None
) -> None:
    if restore_test is None or targets is None or restore_test.timeout <= targets.rto:
        return
    report.warning(
        ("restore_test", "timeout"),
        f"restore tests may take up to {format_duration(restore_test.timeout)}, longer than "
        f"the rto {format_duration(targets.rto)}: a restore that slow already misses the RTO",
    )


def _absolute_scratch_dirs(restore_test: RestoreTest, base: Path) -> RestoreTest:
    """Relative scratch directories, made absolute against the daemon config's directory."""
    scratch = {
        key: spec.model_copy(
            update={
                name: _normalized(base / value)
                for name in ("dir", "bin_dir")
                if (value := getattr(spec, name)) is not None and not value.is_absolute()
            }
        )
        for key, spec in restore_test.scratch.items()
    }
    return restore_test.model_copy(update={"scratch": scratch})


def _check_restore_test_sources(
    report: _FileReport,
    restore_test: RestoreTest | None,
    sources: list[SourceOptions],
    base: Path,
) -> None:
    """The restore_test entries that name sources or kinds: they must exist, fit the source's
    kind, and a scratch environment must never be the source itself (drd.config.guard)."""
    from drd.config.guard import refusal

    if restore_test is None:
        return
    by_name = {source.name: source for source in sources}
    kinds = sorted(SCRATCH_FOR_SOURCE)
    for key, spec in restore_test.scratch.items():
        loc: Loc = ("restore_test", "scratch", key)
        if key not in by_name and key not in kinds:
            report.error(
                loc,
                f"neither a source of this plan ({', '.join(by_name) or 'none'}) nor a source "
                f"kind ({', '.join(kinds)})",
                key=True,
            )
        if spec.dsn is not None and _has_inline_password(spec.dsn):
            report.warning(
                (*loc, "dsn"),
                "the DSN contains a password: put the password in PGPASSWORD/.pgpass, not the plan",
            )
    for source in sources:
        key = source.name if source.name in restore_test.scratch else source.kind
        spec = restore_test.scratch_for(source)
        loc = ("restore_test", "scratch", key)
        if key not in restore_test.scratch:
            if source.kind == "cloudsql":
                report.warning(
                    ("restore_test", "scratch"),
                    f"source {source.name} (kind cloudsql) has no scratch environment: its "
                    "restore tests fail until one is given ({kind: cloudsql-scratch-project, "
                    "project: ...})",
                )
            continue  # the default always fits
        fitting = SCRATCH_FOR_SOURCE.get(source.kind, ())
        if spec.kind not in fitting:
            report.error(
                (*loc, "kind"),
                f"{spec.kind} cannot hold source {source.name} (kind {source.kind}; use "
                f"{' or '.join(fitting) or 'none'})",
            )
            continue
        if spec.dir is not None and not spec.dir.is_absolute():
            spec = spec.model_copy(update={"dir": _normalized(base / spec.dir)})
        refused = refusal(spec, source)
        if refused is not None:
            report.error((*loc, refused[0]), refused[1])
    for name, checks in restore_test.checks.items():
        checked = by_name.get(name)
        if checked is None:
            report.error(
                ("restore_test", "checks", name),
                f"not a source of this plan ({', '.join(by_name) or 'none'})",
                key=True,
            )
            continue
        seen: dict[str, int] = {}
        for index, check in enumerate(checks):
            loc = ("restore_test", "checks", name, index)
            fitting = CHECKS_FOR_SOURCE.get(checked.kind, ("command",))
            if check.kind not in fitting:
                report.error(
                    (*loc, check.kind),
                    f"{check.kind} checks do not apply to source {name} (kind {checked.kind}; "
                    f"use {', '.join(fitting)})",
                )
            label = check.display_name(index + 1)
            if label in seen:
                report.error(
                    (*loc, "name"), f"duplicate check name {label!r} (also [{seen[label]}])"
                )
            seen.setdefault(label, index)


def _check_source_names(report: _FileReport, raw_sources: Any) -> None:
    seen: dict[str, int] = {}
    for index, entry in enumerate(_list(raw_sources)):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            report.error(
                ("sources", index, "name"), f"duplicate source name (also sources[{seen[name]}])"
            )
        else:
            seen[name] = index


def _check_dsn_passwords(report: _FileReport, raw_sources: Any) -> None:
    for index, entry in enumerate(_list(raw_sources)):
        if not isinstance(entry, dict):
            continue
        for key, value in entry.items():
            if isinstance(value, str) and _has_inline_password(value):
                report.warning(
                    ("sources", index, key),
                    "the DSN contains a password: put the password in PGPASSWORD/.pgpass or a "
                    "credential, not the plan",
                )


_KEYWORD_PASSWORD = re.compile(r"(^|\s)password\s*=", re.IGNORECASE)


def _has_inline_password(value: str) -> bool:
    """A URL with a password (scheme://user:secret@host) or a libpq `password=...` string."""
    if _KEYWORD_PASSWORD.search(value):
        return True
    if "://" not in value:
        return False
    try:
        return bool(urlsplit(value).password)
    except ValueError:
        return False


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
_KEY_MATERIAL = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY|AGE-SECRET-KEY-")
_NOT_IN_CONFIG_MESSAGE = (
    "looks like a secret: config files must not hold keys, passwords or tokens (keys come from "
    "keys.source: env, credential or stdin)"
)


def _looks_secret(field_name: str) -> bool:
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", field_name.lower()))


def _check_secret_values(report: _FileReport, data: Any, loc: Loc = ()) -> None:
    """No value anywhere may be key material (a PEM private key, an age identity, ...)."""
    for item_loc, value in _walk(data, loc):
        if isinstance(value, str) and _KEY_MATERIAL.search(value):
            report.error(item_loc, "looks like key material: never put keys in config files")


def _walk(data: Any, loc: Loc) -> Iterator[tuple[Loc, Any]]:
    yield loc, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _walk(value, (*loc, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _walk(value, (*loc, index))


# --------------------------------------------------------------------------------------------
# Reporting: turning YAML problems and pydantic errors into findings with lines

_M = TypeVar("_M", bound=BaseModel)


@dataclass
class _FileReport:
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
            self.error((), f"got {_kind_of(data)} at the top level: {shape}")
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
        return f"expected {_EXPECTED[prefix]}, got {_kind_of(error['input'])}"
    text = error["msg"]
    return text[:1].lower() + text[1:]


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


def _kind_of(value: Any) -> str:
    """What a YAML value is, for messages ("a list", "null"); never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime):
        return "a date and time"
    if isinstance(value, date):
        return "a date"
    return type(value).__name__


def _normalized(path: Path) -> Path:
    """Absolute, with "." and ".." resolved lexically (symlinks are left alone)."""
    return Path(os.path.normpath(path.absolute()))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _get(data: Any, *path: str) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data
