"""The pydantic models of the daemon config (drd.yaml) and of the DR plans it lists.

A model checks its own fields, and the rules that relate fields of the same section: a model
validator raises `drd.fields.rule(field, message)`, which names the field the error is about.
The loader (drd.config.loader) validates every section with its own model, so that a mistake in
one section does not hide mistakes in others, and builds Config and Plan from them; the rules
that relate sections, files or today's date are in drd.config.rules.

Secrets: no field holds a key, password or token. Keys come from `keys.source` (env,
credential, stdin) and nothing else; Google credentials likewise (credential, env, or anonymous
for an emulator).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    StrictInt,
    field_validator,
    model_validator,
)

from drd.config.findings import Finding
from drd.durations import format_duration
from drd.fields import (
    Day,
    Duration,
    Name,
    NonEmptyStr,
    PositiveDuration,
    Size,
    rule,
    secret_name_problem,
)
from drd.restore_tests.spec import CheckSpec, PitrProbeSpec, ScratchSpec, default_scratch
from drd.storage.google_auth import (
    PLAIN_HTTP_REFUSED,
    anonymous_allowed,
    is_loopback_host,
    plain_http_off_loopback,
    split_endpoint,
)
from drd.storage.urls import parse_region_url
from drd.strategies import SourceOptions
from drd.strategies.base import DEFAULT_SAMPLE_ROWS, ContentDigest, ContentMode

if TYPE_CHECKING:
    from drd.storage.regions import RegionSpec

#: The security page promises that backups are destroyed within 14 days.
MAX_RETENTION = timedelta(days=14)
#: GCS resumable uploads need chunks that are a multiple of 256 KiB.
GCS_CHUNK_QUANTUM = 256 * 1024


# --------------------------------------------------------------------------------------------
# Model basics


def _check_secret_name(source: str, name: str | None) -> None:
    """The `{source, name}` pair of keys and credentials (drd.fields.secret_name_problem)."""
    problem = secret_name_problem(source, name, explain=True)
    if problem is not None:
        raise rule("name", problem)


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
        _check_secret_name(self.source, self.name)
        return self


class ApiToken(_Model):
    """A bearer token the API accepts, stored only as its SHA-256 (`drd token` makes one)."""

    name: Name
    role: Literal["viewer", "operator", "coordinator"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ApiTls(_Model):
    """TLS for the API, from systemd credentials (LoadCredential=/LoadCredentialEncrypted=):
    the key never sits in the config or beside it."""

    #: the credential holding the PEM certificate chain
    certificate: NonEmptyStr
    #: the credential holding the PEM private key
    key: NonEmptyStr

    @model_validator(mode="after")
    def _names(self) -> Self:
        for field_name in ("certificate", "key"):
            problem = secret_name_problem("credential", getattr(self, field_name))
            if problem:
                raise ValueError(f"{field_name}: {problem}")
        return self


class ApiConfig(_Model):
    #: "host:port" ("[::1]:9187" for IPv6); port 0 picks a free port
    listen: str = "127.0.0.1:9187"
    #: serve HTTPS (else plain HTTP: keep it on loopback or behind a TLS reverse proxy)
    tls: ApiTls | None = None
    #: listening off loopback without tokens, or with public_read, must be acknowledged
    exposed: bool = False
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

    @model_validator(mode="after")
    def _off_loopback(self) -> Self:
        """Off loopback, anyone who reaches the port can call the API: without tokens it is
        open to all, with public_read its status and drill reports are. Say so on purpose."""
        if self.exposed or is_loopback_host(self.host):
            return self
        if not self.tokens:
            raise ValueError(
                f"listen {self.listen} is off loopback and no token is configured: anyone who "
                "reaches the port may start backups and drills (add tokens, listen on "
                "127.0.0.1, or set exposed: true to accept it)"
            )
        if self.public_read:
            raise ValueError(
                f"listen {self.listen} is off loopback with public_read: status and drill "
                "reports are readable without a token by anyone who reaches the port (set "
                "exposed: true to accept it)"
            )
        return self

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
        _check_secret_name(self.source, self.name)
        return self


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
        parse_region_url(value)
        return value

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            split_endpoint(value)
        return value

    @model_validator(mode="after")
    def _fields_fit_scheme(self) -> Self:
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise rule("chunk_size", "must be more than 0 bytes")
        if self.scheme != "gs":
            for name in ("project", "endpoint", "credentials", "timeout", "retry_deadline"):
                if getattr(self, name) is not None:
                    raise rule(name, "only applies to gs:// regions")
            return self
        if self.project is None:
            raise rule("project", "field required for gs:// regions")
        if self.credentials is None:
            raise rule(
                "credentials", "field required for gs:// regions (source: credential or env)"
            )
        if self.credentials.source == "anonymous" and not anonymous_allowed(self.endpoint):
            raise rule(
                "credentials.source",
                "anonymous is only allowed with an endpoint on a loopback address (an emulator)",
            )
        if self.endpoint is not None and plain_http_off_loopback(self.endpoint):
            raise rule("endpoint", PLAIN_HTTP_REFUSED)
        if self.chunk_size is not None and self.chunk_size % GCS_CHUNK_QUANTUM:
            raise rule("chunk_size", "must be a multiple of 256KiB for gs:// regions")
        return self

    @property
    def scheme(self) -> Literal["file", "gs", "mem"]:
        return parse_region_url(self.url).scheme

    @property
    def local_path(self) -> Path | None:
        """The directory of a file: region (absolute once loaded); None for other schemes."""
        parsed = parse_region_url(self.url)
        return Path(parsed.where) if parsed.scheme == "file" else None

    @property
    def bucket(self) -> str | None:
        parsed = parse_region_url(self.url)
        return parsed.where if parsed.scheme == "gs" else None

    @property
    def prefix(self) -> str:
        """The object prefix inside the bucket, without slashes at either end ("" if none)."""
        return parse_region_url(self.url).prefix

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


class RegionProbeConfig(_Model):
    """The daemon's periodic probe of every region (drd.daemon.region_probe_loop): what keeps
    drd_region_up true while no job touches a region."""

    #: how often every region is probed
    every: PositiveDuration = timedelta(seconds=30)
    #: a region that has not answered within this long is down
    timeout: PositiveDuration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _timeout_within_every(self) -> Self:
        if self.timeout > self.every:
            raise rule(
                "timeout",
                f"{format_duration(self.timeout)} is longer than every "
                f"({format_duration(self.every)}): a probe must end before the next is due",
            )
        return self


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
    #: probing every region, so that drd_region_up is true without anyone asking
    region_probe: RegionProbeConfig = Field(default_factory=RegionProbeConfig)


def _default_keys() -> KeysConfig:
    return KeysConfig(source="env", name="DRD_KEYS")


class ConfigFile(_Model):
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
            raise rule("", "give exactly one of 'every' or 'cron'")
        if self.every is not None and self.jitter >= self.every:
            raise rule("jitter", "must be shorter than the interval ('every')")
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
                raise rule(f"regions.{index}", f"region listed twice (also regions[{first}])")
        if len(self.regions) < 2:
            raise rule(
                "regions", "at least 2 regions required (a plan must survive losing a region)"
            )
        if self.min_copies > len(self.regions):
            raise rule(
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
    #: what the built-in content check covers, recorded at backup time: "sampled" (rows chosen
    #: by key ranges, at most sample_rows per table) or "full" (every row of every table); for
    #: every source, or by source name or kind ({main-db: full}; the others sampled)
    content: ContentMode | dict[str, ContentMode] = "sampled"
    #: the per-table row budget of a sampled content digest: smaller tables are digested whole
    sample_rows: int = Field(default=DEFAULT_SAMPLE_ROWS, ge=1, le=10_000_000)
    #: postgres-physical sources: probes recorded while archiving, for restore tests and
    #: drills at a random point in time (none: their restore tests restore the base backup)
    pitr_probe: PitrProbeSpec | None = None

    def scratch_for(self, source: SourceOptions) -> ScratchSpec | None:
        """The plan's scratch for the source (by name, else by kind), else its kind's default
        (None: its kind has none, the plan must name one)."""
        spec = self.scratch.get(source.name) or self.scratch.get(source.kind)
        return spec or default_scratch(source.kind)

    def checks_for(self, source_name: str) -> list[CheckSpec]:
        return list(self.checks.get(source_name, []))

    def content_for(self, source: SourceOptions) -> ContentDigest:
        """How much of the source's data its backups digest for the content check."""
        mode = self.content
        if isinstance(mode, dict):
            mode = mode.get(source.name) or mode.get(source.kind) or "sampled"
        return ContentDigest(mode, self.sample_rows)


class PlanFile(_Model):
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
PLAN_SECTIONS: dict[str, tuple[type[_Model], bool]] = {
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
