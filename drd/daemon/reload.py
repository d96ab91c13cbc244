"""What a config reload (SIGHUP, `systemctl reload drd`) may change, and what it changed.

The new config is loaded and validated completely first (drd.config.loader.load_config: every
plan, every rule); any error refuses the reload and the running config stays. Some settings
are bound to what the running process has opened or handed out, and a reload that changes
them is refused too, naming them, so the running config never half applies:

- `state_dir` (the job history, the locks, the audit trail are open there),
- `keys` (the keyring is read once, at start),
- `api` (the socket is bound and its TLS and tokens loaded),
- `regions` (each is open, with its credentials; the audit trail ships to them).

Everything else takes effect: plans added and removed (their sources scheduled and
unscheduled, their series exported and removed), sources added, removed or changed, changed
schedules, targets, retention, restore tests, `daemon.*` (for jobs started from then on) and
`log` (level and format, unless given on the command line).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drd.config.models import Config, Plan
from drd.layout import SourceRef

#: settings a reload cannot apply, and why
RESTART_ONLY = {
    "state_dir": "the job history, locks and audit trail are open there",
    "keys": "the keyring is read at start",
    "api": "the listening socket, TLS and tokens are set up at start",
    "regions": "regions are opened at start",
}


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The settings that differ and only a restart applies, each with why."""
    changed = []
    for name, why in RESTART_ONLY.items():
        if getattr(old, name) != getattr(new, name):
            changed.append(f"{name} ({why})")
    return changed


def source_refs(cfg: Config) -> dict[SourceRef, Plan]:
    return {SourceRef(p.name, s.name): p for p in cfg.plans for s in p.sources}


@dataclass
class ConfigChanges:
    """What differs between two valid configs (for the log and the tests)."""

    plans_added: list[str] = field(default_factory=list)
    plans_removed: list[str] = field(default_factory=list)
    plans_changed: list[str] = field(default_factory=list)
    sources_added: list[SourceRef] = field(default_factory=list)
    sources_removed: list[SourceRef] = field(default_factory=list)
    sources_changed: list[SourceRef] = field(default_factory=list)
    settings_changed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(vars(self).values())

    def summary(self) -> str:
        parts = []
        for label, items in (
            ("plans added", self.plans_added),
            ("plans removed", self.plans_removed),
            ("plans changed", self.plans_changed),
            ("sources added", self.sources_added),
            ("sources removed", self.sources_removed),
            ("sources changed", self.sources_changed),
            ("settings changed", self.settings_changed),
        ):
            if items:
                parts.append(f"{label}: {', '.join(str(i) for i in items)}")
        return "; ".join(parts) or "nothing changed"


def _comparable(plan: Plan) -> dict[str, object]:
    """A plan without its sources (compared one by one) and its file's path."""
    return plan.model_dump(exclude={"sources", "path"})


def config_changes(old: Config, new: Config) -> ConfigChanges:
    changes = ConfigChanges()
    old_plans = {p.name: p for p in old.plans}
    new_plans = {p.name: p for p in new.plans}
    changes.plans_added = sorted(set(new_plans) - set(old_plans))
    changes.plans_removed = sorted(set(old_plans) - set(new_plans))
    for name in sorted(set(old_plans) & set(new_plans)):
        if _comparable(old_plans[name]) != _comparable(new_plans[name]):
            changes.plans_changed.append(name)
    old_refs, new_refs = source_refs(old), source_refs(new)
    changes.sources_added = sorted(set(new_refs) - set(old_refs), key=str)
    changes.sources_removed = sorted(set(old_refs) - set(new_refs), key=str)
    for ref in sorted(set(old_refs) & set(new_refs), key=str):
        before = old_refs[ref].source(ref.source).model_dump()
        after = new_refs[ref].source(ref.source).model_dump()
        if before != after:
            changes.sources_changed.append(ref)
    for name in ("daemon", "log"):
        if getattr(old, name) != getattr(new, name):
            changes.settings_changed.append(name)
    return changes
