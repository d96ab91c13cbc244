"""What a source strategy is: how one kind of source is dumped and restored.

A strategy turns a live source into one plaintext byte stream (dump) and a byte stream back into
a restored copy (restore). Compression, encryption and storage are the pipeline's business, not
the strategy's: a strategy never sees keys or regions.

Rules every strategy follows:
- dump() is an async generator of plaintext chunks with bounded memory whatever the source size.
  It yields a consistent image of the source (one snapshot). If the source tool fails, it raises
  SourceError *after* or *instead of* the last chunk, so the pipeline never commits a backup whose
  dump did not finish cleanly. Closing the generator early (aclose) stops and reaps any child
  process.
- restore_metadata() is called after dump() is exhausted; what it returns is stored, authenticated,
  in the manifest and handed back to restore() (tool versions, formats, statistics).
  Statistics for restore tests go under its "statistics" key, taken from the same consistent
  image the dump is (row counts, a schema fingerprint, file digests), together with the
  results of `capture_queries` (see restore_tests/) and content digests as `content` asks:
  restore tests compare them with the restored copy. Failing to take them never fails the
  dump; the error is recorded instead.
  Its "degraded" key, when present, lists why the dump is not a faithful image of the source
  (a file that kept changing while being read, ...): the backup is then recorded as
  `degraded` instead of `ok` (drd.pipeline.backup).
- restore() is a classmethod: at 3 a.m. on a fresh machine there may be no plan, only the
  manifest. It restores into a *new* staging location next to the target and hands it over
  (rename) only when the stream ended cleanly and the tool succeeded. On any failure (including
  an IntegrityError raised by the stream mid-way) the staging copy is removed and the target is
  left exactly as it was. It refuses (TargetExists) a target that already exists.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from drd.fields import NAME_PATTERN


class SourceOptions(BaseModel):
    """Fields every source has. Each strategy subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    kind: str


#: how much of the data the content digests for restore tests cover: "sampled" (rows chosen by
#: key ranges, up to a row budget per table) or "full" (every row)
ContentMode = Literal["sampled", "full"]
#: the per-table row budget of a sampled content digest, unless the plan says otherwise
DEFAULT_SAMPLE_ROWS = 10_000


@dataclass(frozen=True)
class ContentDigest:
    """What the plan asks the backup to record about the data itself, for the restore tests'
    content check (restore_test.content, restore_test.sample_rows). Kinds without per-row
    content digests ignore it."""

    mode: ContentMode = "sampled"
    #: sampled: tables of at most this many rows are digested whole; bigger ones in key ranges
    #: holding this many rows in all
    sample_rows: int = DEFAULT_SAMPLE_ROWS


@dataclass
class RestoreOutcome:
    """What restore() produced, for reports and restore tests."""

    target: str
    # strategy-specific facts about the restored copy (tables restored, files written, ...)
    details: dict[str, Any] = field(default_factory=dict)
    #: what the target could not take although the backup has it (one line each; the restore
    #: still succeeded): xattrs on a filesystem without them, device nodes without root, ...
    warnings: list[str] = field(default_factory=list)


OptionsT = TypeVar("OptionsT", bound=SourceOptions)


class Strategy(abc.ABC, Generic[OptionsT]):
    #: the `kind:` value in a plan
    kind: ClassVar[str]
    #: the pydantic model of this kind's source entry in a plan (the class of OptionsT)
    Options: ClassVar[type[SourceOptions]]

    # What a restore test can do with a backup of this kind. drd.config, drd.restore_tests and
    # drd.verify.scratch ask these instead of keeping tables of kinds; the defaults fit a kind
    # that restore tests only restore (into a scratch directory) and check with commands.

    #: the scratch environment kinds (restore_test.scratch `kind:`) that can hold a restored
    #: copy; the plan may name no other. Empty: none is declared, and the plan's choice is not
    #: checked ahead of the restore
    scratch_kinds: ClassVar[tuple[str, ...]] = ()
    #: the scratch environment kind used when the plan names none; None: there is no sensible
    #: default, the plan must name one (drd validate warns, the restore test fails saying so)
    default_scratch: ClassVar[str | None] = "tempdir"
    #: the scratch entry drd validate suggests when there is no default_scratch (YAML flow)
    scratch_example: ClassVar[str] = ""
    #: the declarative checks (restore_test.checks: sql, freshness, file, command) that apply
    #: to a restored copy of this kind
    check_kinds: ClassVar[tuple[str, ...]] = ("command",)
    #: what the restored copy is to the checks: "postgres" (a database reached by a libpq DSN),
    #: "sqlite" (a database file) or "tree" (a directory tree). drd.restore_tests picks the
    #: built-in checks by it (row counts and schema, file digests) and how sql and freshness
    #: checks query the copy. None: no built-in checks read the copy
    restored_as: ClassVar[str | None] = None
    #: the name of the restored file or directory in a scratch directory
    restored_name: ClassVar[str] = "restored"

    #: the OS user (besides drd) who writes into a scratch directory during the restore, e.g.
    #: the server's user a data directory is extracted as; the scratch directory is handed to
    #: them. None: drd writes it itself
    @classmethod
    def scratch_owner(cls) -> str | None:
        return None

    #: the source's `path` is a directory tree backed up whole: a scratch directory inside it
    #: is refused (the restore would write into the live tree, and the next backup hold it)
    source_is_tree: ClassVar[bool] = False

    def __init__(self, options: SourceOptions) -> None:
        if not isinstance(options, self.Options):
            # A plain SourceOptions (e.g. built by hand): validate it as this kind's model.
            options = self.Options.model_validate(options.model_dump())
        self.options = options
        #: the options as this kind's own model
        self.opts: OptionsT = cast(OptionsT, options)
        #: what restore_metadata() returns, set when dump() finishes
        self._metadata: dict[str, Any] | None = None
        #: SQL queries (id -> query) whose results restore tests compare with the restored copy
        #: ("matches the source"); the caller sets them before dump(). Kinds without SQL ignore
        #: them.
        self.capture_queries: dict[str, str] = {}
        #: how much of the data the content digests cover (the plan's restore_test.content);
        #: the caller sets it before dump()
        self.content = ContentDigest()

    @abc.abstractmethod
    def dump(self) -> AsyncIterator[bytes]:
        """Yield the source's consistent plaintext image in chunks."""

    def restore_metadata(self) -> dict[str, Any]:
        """JSON-serialisable facts restore() needs; valid once dump() is exhausted (dump()
        sets self._metadata as its last step)."""
        if self._metadata is None:
            raise RuntimeError("restore_metadata() is only valid once dump() is exhausted")
        return dict(self._metadata)

    @classmethod
    @abc.abstractmethod
    async def restore(
        cls, chunks: AsyncIterator[bytes], target: str, metadata: Mapping[str, Any]
    ) -> RestoreOutcome:
        """Restore the stream into `target` atomically (see module docstring)."""


#: a strategy of any kind, for code that handles them all alike
AnyStrategy = Strategy[Any]
