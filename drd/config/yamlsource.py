"""YAML loading that remembers where every value came from.

`load_yaml` parses one YAML document with PyYAML's safe resolver and constructors (plain data:
mappings, lists, strings, numbers, booleans, null, dates) and returns the data together with the
line of every node, keyed by its path (`("sources", 0, "dsn")`), so that validation errors can
point at `plans/billing.yaml:12`.

Differences from `yaml.safe_load`, all deliberate:
- duplicate keys in a mapping are reported (PyYAML silently keeps the last one);
- mapping keys are taken as written, as strings (`on:` is the key "on", not True);
- tags other than the standard scalar ones are reported instead of constructed;
- alias expansion is bounded (a "billion laughs" document is rejected).

Fatal problems (unreadable file, syntax error, several documents) raise YamlSourceError;
problems that still leave usable data (duplicate keys, unsupported tags) are returned in
`YamlDocument.problems`, so the caller can report them next to its own findings.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: a path into the data: mapping keys and list indexes, e.g. ("sources", 0, "dsn")
Loc = tuple[str | int, ...]

_STANDARD_TAG_PREFIX = "tag:yaml.org,2002:"
_MAP_TAG = _STANDARD_TAG_PREFIX + "map"
_SEQ_TAG = _STANDARD_TAG_PREFIX + "seq"
_MERGE_TAG = _STANDARD_TAG_PREFIX + "merge"
#: nodes constructed per document, counting each alias expansion; config files have hundreds
_MAX_NODES = 100_000


class YamlSourceError(Exception):
    """The file cannot be read or is not one well-formed YAML document."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path = path
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Position:
    """Where a node is. `line` is the line to report for the node: the value's own line for a
    scalar, the key's line for a mapping or list held by a key (`storage:` rather than the first
    line below it). `key_line` is the line of the key for entries of a mapping."""

    line: int
    key_line: int | None = None


@dataclass(frozen=True)
class YamlProblem:
    """A problem found while loading that still left usable data."""

    loc: Loc
    line: int
    message: str
    #: the value at `loc` could not be built and is None in the data (bad tag, bad date)
    value_dropped: bool = True


@dataclass
class YamlDocument:
    path: Path
    #: the document's data: dict / list / str / int / float / bool / None / date / datetime
    data: Any
    positions: dict[Loc, Position] = field(default_factory=dict)
    problems: list[YamlProblem] = field(default_factory=list)

    def line_of(self, loc: Loc, *, missing: bool = False, key: bool = False) -> int | None:
        """The line to report for a finding at `loc`.

        missing: `loc` names a field that is absent: the line of the mapping that lacks it.
        key: the finding is about the key itself (an unknown field): the key's line.
        Otherwise the value's line. Falls back to the nearest enclosing node that exists.
        """
        if missing and loc:
            loc = loc[:-1]
        for end in range(len(loc), -1, -1):
            position = self.positions.get(loc[:end])
            if position is not None:
                if key and end == len(loc) and position.key_line is not None:
                    return position.key_line
                return position.line
        return None


# A config or plan is a few KiB; a limit keeps `plans: [/dev/zero]` or a misnamed dump from
# exhausting memory before any validation can say what is wrong.
MAX_FILE_BYTES = 1024 * 1024


def load_yaml(path: Path) -> YamlDocument:
    """Read and parse one YAML file (see module docstring). Raises YamlSourceError."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang; anything but a regular file is refused.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise YamlSourceError(path, None, "no such file") from None
    except OSError as exc:
        raise YamlSourceError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise YamlSourceError(path, None, "is a directory, not a YAML file")
        if not stat.S_ISREG(mode):
            raise YamlSourceError(path, None, "is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise YamlSourceError(path, None, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise YamlSourceError(
            path, None, f"is larger than {MAX_FILE_BYTES // 1024} KiB: not a drd config or plan"
        )
    return parse_yaml(raw, path)


def parse_yaml(text: str | bytes, path: Path) -> YamlDocument:
    """Parse YAML text; `path` is used in positions and errors only."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            message = f"{exc.problem.removeprefix('but ')} ({exc.context})"
        raise YamlSourceError(path, mark.line + 1 if mark else None, message) from None
    except yaml.YAMLError as exc:  # e.g. ReaderError: bytes that are not valid UTF-8/16
        raise YamlSourceError(path, None, f"not a readable YAML file: {exc}") from None
    document = YamlDocument(path=path, data=None)
    if root is not None:
        builder = _Builder(document)
        document.data = builder.build(root, (), key_line=None)
    return document


class _Builder:
    """Turns a composed node tree into plain data, recording positions and problems."""

    def __init__(self, document: YamlDocument) -> None:
        self.document = document
        self.constructor = SafeConstructor()
        self.count = 0
        self.active: set[int] = set()  # ids of collection nodes being built (recursive aliases)

    def build(self, node: Node, loc: Loc, key_line: int | None) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise YamlSourceError(
                self.document.path,
                _line(node),
                "document too large (more than 100000 values, counting alias expansions)",
            )
        is_collection = isinstance(node, MappingNode | SequenceNode)
        line = key_line if is_collection and key_line is not None else _line(node)
        self.document.positions[loc] = Position(line=line, key_line=key_line)
        if isinstance(node, ScalarNode):
            return self._scalar(node, loc)
        if id(node) in self.active:
            self._problem(loc, _line(node), "recursive alias")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                if node.tag != _MAP_TAG:
                    self._problem(loc, _line(node), f"unsupported YAML tag {_tag_name(node.tag)}")
                    return None
                return self._mapping(node, loc)
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    self._problem(loc, _line(node), f"unsupported YAML tag {_tag_name(node.tag)}")
                    return None
                return [
                    self.build(item, (*loc, index), key_line=None)
                    for index, item in enumerate(node.value)
                ]
        finally:
            self.active.discard(id(node))
        raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def _scalar(self, node: ScalarNode, loc: Loc) -> Any:
        standard = node.tag.startswith(_STANDARD_TAG_PREFIX)
        try:
            return self.constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            message = (exc.problem or "invalid value") if standard else None
        except (ValueError, TypeError, AttributeError) as exc:
            # e.g. `reviewed_on: 2026-02-30` resolves as a date that does not exist
            kind = node.tag.removeprefix(_STANDARD_TAG_PREFIX)
            kind = {"timestamp": "date", "int": "integer"}.get(kind, kind)
            message = f"invalid {kind}: {exc}" if standard else None
        self._problem(loc, _line(node), message or f"unsupported YAML tag {_tag_name(node.tag)}")
        return None

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        # `<<: *defaults` merges: explicit keys win over merged ones, whatever the order.
        own_position = self.document.positions[loc]
        for merged in self._merges(node, loc):
            result.update(merged)
        # building the merged mappings at this path overwrote this mapping's own position
        self.document.positions[loc] = own_position
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key_line = _line(key_node)
            if not isinstance(key_node, ScalarNode):
                self._problem(
                    loc, key_line, "mapping keys must be plain strings", value_dropped=False
                )
                continue
            key = key_node.value
            if key in first_seen:
                self._problem(
                    (*loc, key),
                    key_line,
                    f"duplicate key (first defined on line {first_seen[key]})",
                    value_dropped=False,
                )
            first_seen[key] = key_line
            result[key] = self.build(value_node, (*loc, key), key_line=key_line)
        return result

    def _merges(self, node: MappingNode, loc: Loc) -> Iterator[dict[str, Any]]:
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            # In a list of merges the earlier mappings win: apply them last.
            for source in reversed(sources):
                if not isinstance(source, MappingNode):
                    self._problem(
                        loc, _line(source), "'<<' must merge a mapping", value_dropped=False
                    )
                    continue
                merged = self.build(source, loc, key_line=None)
                if isinstance(merged, dict):
                    yield merged

    def _problem(self, loc: Loc, line: int, message: str, *, value_dropped: bool = True) -> None:
        self.document.problems.append(YamlProblem(loc, line, message, value_dropped))


def _tag_name(tag: str) -> str:
    if tag.startswith(_STANDARD_TAG_PREFIX):
        return "!!" + tag.removeprefix(_STANDARD_TAG_PREFIX)
    return tag


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1
