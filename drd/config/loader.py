"""Loading drd.yaml and the plans it lists: `load_config` (raises ConfigError listing every
error) and `validate` (returns every error and warning as findings).

Both read the config and every plan completely before they judge, so that one run shows all
the mistakes: each file is read through drd.config.yamlsource (every value keeps its line),
each section is validated by its own model (drd.config.models), each source by its strategy's
Options model, and then every rule of drd.config.rules runs. Paths in the files are relative
to the config's directory; the loader makes them absolute.
"""

from __future__ import annotations

import glob
import os
from datetime import date
from pathlib import Path
from typing import Any

from drd.config.findings import FileReport, Finding, display_path
from drd.config.models import (
    PLAN_SECTIONS,
    Config,
    ConfigFile,
    Plan,
    PlanFile,
    RegionConfig,
    RestoreTest,
)
from drd.config.raw import as_list, get_in, kind_of
from drd.config.rules import (
    check_dsn_passwords,
    check_plan_regions,
    check_restore_test,
    check_restore_test_sources,
    check_review,
    check_schedule,
    check_secret_values,
    check_slot_names,
    check_source_names,
    check_wal_rpo,
)
from drd.config.yamlsource import Loc
from drd.errors import ConfigError
from drd.storage.urls import file_url, parse_region_url
from drd.strategies import SourceOptions, get_strategy


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
    report = FileReport(config_path)
    raw = report.read("a daemon config is a mapping with regions, plans, keys, ...")
    if raw is None:
        return report.sorted(), None

    header = report.validate_model(ConfigFile, raw)
    regions = _load_regions(report, raw.get("regions"), base)
    check_secret_values(report, raw)

    region_names = {
        entry["name"]
        for entry in as_list(raw.get("regions"))
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    }
    plan_patterns = raw.get("plans")
    plan_files: list[Path] = []
    if isinstance(plan_patterns, list):
        plan_files = _find_plan_files(report, plan_patterns, base)

    findings = report.sorted()
    plans: list[Plan] = []
    names: dict[str, Path] = {}
    slots: dict[tuple[str, ...], str] = {}
    for plan_file in plan_files:
        plan_report = FileReport(plan_file)
        plan = _load_plan(plan_report, config_path, region_names, today)
        if plan is not None:
            plans.append(plan)
            check_slot_names(plan_report, plan, slots)
        name = plan.name if plan else get_in(plan_report.doc_data, "name")
        if isinstance(name, str) and name in names:
            plan_report.error(("name",), f"plan name already used by {display_path(names[name])}")
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


def _load_regions(report: FileReport, raw_regions: Any, base: Path) -> list[RegionConfig]:
    regions: list[RegionConfig] = []
    seen_names: dict[str, int] = {}
    seen_locations: dict[tuple[str, ...], int] = {}
    for index, entry in enumerate(as_list(raw_regions)):
        if not isinstance(entry, dict):
            continue  # reported by ConfigFile
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
            region = region.model_copy(update={"url": file_url(absolute)})
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
    parsed = parse_region_url(region.url)
    if parsed.scheme == "gs":
        return (parsed.scheme, parsed.where, region.endpoint or "")
    return (parsed.scheme, parsed.where)


def _find_plan_files(report: FileReport, patterns: list[Any], base: Path) -> list[Path]:
    """The plan files named by `plans:` (paths or globs, relative to the config's directory)."""
    files: list[Path] = []
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            continue  # reported by ConfigFile
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
    report: FileReport, config_path: Path, region_names: set[str], today: date
) -> Plan | None:
    raw = report.read(
        "a DR plan is a mapping with name, owner, reviewed_on, targets, schedule, storage "
        "and sources"
    )
    if raw is None:
        return None
    header = report.validate_model(PlanFile, raw)
    sections: dict[str, Any] = {}
    for key, (model, optional) in PLAN_SECTIONS.items():
        if key not in raw and optional:
            sections[key] = model()
        elif isinstance(raw.get(key), dict):
            sections[key] = report.validate_model(model, raw[key], (key,))
    sources = _load_sources(report, raw.get("sources"), config_path.parent)
    restore_test = sections.get("restore_test")
    if restore_test is not None:
        restore_test = _absolute_scratch_dirs(restore_test, config_path.parent)
        sections["restore_test"] = restore_test

    check_review(report, raw.get("reviewed_on"), today)
    continuous = check_wal_rpo(report, raw.get("sources"), sources, sections.get("targets"))
    check_schedule(
        report, sections.get("schedule"), sections.get("targets"), today, continuous=continuous
    )
    check_plan_regions(report, get_in(raw, "storage", "regions"), region_names, config_path)
    check_restore_test(report, restore_test, sections.get("targets"))
    check_source_names(report, raw.get("sources"))
    check_dsn_passwords(report, raw.get("sources"))
    check_secret_values(report, raw)
    check_restore_test_sources(report, restore_test, sources)

    if header is None or report.has_errors or None in sections.values():
        return None
    return Plan(
        name=header.name,
        owner=header.owner,
        reviewed_on=header.reviewed_on,
        sources=sources,
        path=report.path,
        **sections,
    )


def _load_sources(report: FileReport, raw_sources: Any, base: Path) -> list[SourceOptions]:
    sources: list[SourceOptions] = []
    for index, entry in enumerate(as_list(raw_sources)):
        if not isinstance(entry, dict):
            continue  # reported by PlanFile
        loc: Loc = ("sources", index)
        kind = entry.get("kind")
        if "kind" not in entry:
            report.error((*loc, "kind"), "field required", missing=True)
            continue
        if not isinstance(kind, str):
            report.error((*loc, "kind"), f"expected a string, got {kind_of(kind)}")
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


def _normalized(path: Path) -> Path:
    """Absolute, with "." and ".." resolved lexically (symlinks are left alone)."""
    return Path(os.path.normpath(path.absolute()))
