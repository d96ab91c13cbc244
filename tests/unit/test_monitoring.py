"""monitoring/: the alert rules load and pass their promtool unit tests, every alert is tested,
documented in the runbook and labelled, and the rules and the Grafana dashboard only use metrics
(and labels) that drd.metrics really exports. The kit's one setting (where RUNBOOK.md is
published) fills every runbook link; the Prometheus and Alertmanager examples are valid and
route what the alerts need; the dashboard keeps daemons (job, instance) apart.

promtool is required: run monitoring/ensure-promtool.sh to install it (Debian's prometheus
package). These tests fail rather than skip without it, so a missing promtool is never mistaken
for passing alert rules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from drd.config.models import ApiConfig
from drd.metrics import RESULTS, STORAGE_RESULTS, Metrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
RUNBOOK = MONITORING / "RUNBOOK.md"
DASHBOARD = MONITORING / "grafana" / "drd.json"
ENSURE_PROMTOOL = MONITORING / "ensure-promtool.sh"
PROMETHEUS = MONITORING / "prometheus.yml"
ALERTMANAGER = MONITORING / "alertmanager.yml"
RENDER = MONITORING / "render.py"
#: the kit's one setting, as the files hold it until monitoring/render.py fills it in
RUNBOOK_TOKEN = "${RUNBOOK_URL}"

SEVERITIES = {"critical", "warning", "info"}
# Labels Prometheus adds at scrape time or that histograms carry, on top of drd's own.
SCRAPE_LABELS = {"job", "instance"}
METRIC_NAME = re.compile(r"\b(drd_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
MATCHER = re.compile(r"""([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*["']""")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        pytest.fail(
            "promtool not found on PATH: run monitoring/ensure-promtool.sh (as root it installs "
            "Debian's 'prometheus' package), or set PROMTOOL=/path/to/promtool",
            pytrace=False,
        )
    return path


def run(cmd: list[str], *, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(ALERTS)
    groups = {g["name"]: g for g in doc["groups"]}
    assert "drd" in groups, "alerts.yml must have a rule group named 'drd'"
    rules = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert rules, "alerts.yml has no alerting rules"
    return rules


def alert_names() -> set[str]:
    return {r["alert"] for r in alert_rules()}


def rule_tests() -> Iterator[dict[str, Any]]:
    for group in load_yaml(ALERTS_TEST)["tests"]:
        yield from group.get("alert_rule_test") or []


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def exported_metrics() -> dict[str, set[str]]:
    """Every series name drd exports, mapped to the label names it can carry."""
    metrics = Metrics()
    labels_by_family: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels_by_family[value._name] = set(value._labelnames)

    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        labels = set(labels_by_family.get(family.name, set())) | SCRAPE_LABELS
        for sample in family.samples:  # Info (and any unlabelled metric) has samples already
            labels |= set(sample.labels)
        suffixes = {  # no _created: drd does not export them
            "counter": ("_total",),
            "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("", "_count", "_sum"),
            "info": ("_info",),
        }[family.type]
        for suffix in suffixes:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def check_promql_names(where: str, text: str, exported: dict[str, set[str]]) -> list[str]:
    """Problems with the metric and label names used in one PromQL expression or template."""
    problems = []
    all_labels = set().union(*exported.values())
    for name in METRIC_NAME.findall(text):
        if name not in exported:
            problems.append(f"{where}: unknown metric {name}")
    for name, matchers in SELECTOR.findall(text):
        if name == "up":
            continue
        if name not in exported:
            problems.append(f"{where}: selector on unknown metric {name!r} (only drd_* and up)")
            continue
        for label in MATCHER.findall(matchers):
            if label not in exported[name]:
                problems.append(f"{where}: {name} has no label {label!r}")
    for group in GROUPING.findall(text):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in all_labels:
                problems.append(f"{where}: grouping by unknown label {label!r}")
    return problems


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in panels(dash):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", query))
    return out


# ----------------------------------------------------------------------------- promtool


def test_promtool_check_rules(promtool: str) -> None:
    proc = run([promtool, "check", "rules", str(ALERTS)])
    assert_ok(proc)
    assert "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_promtool_rule_unit_tests(promtool: str) -> None:
    proc = run([promtool, "test", "rules", str(ALERTS_TEST)])
    assert_ok(proc)
    assert "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool has no query linter; feed every panel query through check rules as recording
    rules, with Grafana's variables replaced by values."""
    substitutions = {
        "$__rate_interval": "5m",
        "$window": "1d",
        "$plan": ".*",
        "$source": ".*",
        "$job": "drd",
        "$instance": ".*",
    }
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs(dashboard())):
        if expr.startswith("label_values("):
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr)
            assert match, f"{where}: cannot parse {expr}"
            expr = match.group(1)
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unhandled dashboard variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run([promtool, "check", "rules", str(path)]))


def test_ensure_promtool_fast_path(promtool: str) -> None:
    assert os.access(ENSURE_PROMTOOL, os.X_OK), "monitoring/ensure-promtool.sh must be executable"
    assert_ok(run(["bash", "-n", str(ENSURE_PROMTOOL)]))
    proc = run([str(ENSURE_PROMTOOL)])
    assert_ok(proc)
    found = proc.stdout.strip()
    assert found and os.access(found, os.X_OK), f"not an executable path: {proc.stdout!r}"
    assert "installing" not in proc.stderr, "promtool is installed: the script must not reinstall"


# ----------------------------------------------------------------------------- rules


def test_every_alert_is_labelled_annotated_and_in_the_runbook() -> None:
    anchors = runbook_anchors()
    problems = []
    for rule in alert_rules():
        name = rule["alert"]
        labels = rule.get("labels") or {}
        annotations = rule.get("annotations") or {}
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity label must be one of {sorted(SEVERITIES)}")
        for key in ("summary", "description", "runbook_url"):
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: missing {key} annotation")
        url = str(annotations.get("runbook_url", ""))
        match = re.fullmatch(re.escape(RUNBOOK_TOKEN) + r"#([\w-]+)", url)
        if not match:
            problems.append(f"{name}: runbook_url {url!r} is not {RUNBOOK_TOKEN}#anchor")
        elif match.group(1) not in anchors:
            problems.append(f"{name}: RUNBOOK.md has no section for anchor #{match.group(1)}")
        elif match.group(1) != name.lower():
            problems.append(f"{name}: runbook anchor should be #{name.lower()}")
    assert not problems, "\n".join(problems)


def test_alert_names_are_unique_per_variant() -> None:
    """Several rules may share an alert name (e.g. DrdDown for a failing and a missing
    target), but then a static label must tell them apart."""
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for rule in alert_rules():
        key = (rule["alert"], tuple(sorted((rule.get("labels") or {}).items())))
        seen[key] = seen.get(key, 0) + 1
    duplicates = [k for k, n in seen.items() if n > 1]
    assert not duplicates, f"rules indistinguishable by name and labels: {duplicates}"


def test_every_alert_has_a_firing_and_a_silent_test() -> None:
    names = alert_names()
    fired: set[str] = set()
    silent: set[str] = set()
    fired_variants: set[tuple[str, str | None]] = set()
    for case in rule_tests():
        name = case["alertname"]
        assert name in names, f"alerts_test.yml tests {name}, which alerts.yml does not define"
        if case.get("exp_alerts"):
            fired.add(name)
            for alert in case["exp_alerts"]:
                labels = alert.get("exp_labels") or {}
                fired_variants.add((name, labels.get("reason")))
                assert "severity" in labels, f"{name}: exp_labels should check severity"
                assert alert.get("exp_annotations"), f"{name}: exp_annotations should be checked"
        else:
            silent.add(name)
    assert sorted(names - fired) == [], "alerts without a test case where they fire"
    assert sorted(names - silent) == [], "alerts without a test case where they stay silent"

    variants = {(r["alert"], (r.get("labels") or {}).get("reason")) for r in alert_rules()}
    assert sorted(variants - fired_variants, key=str) == [], "rule variants never seen firing"


def test_alerts_test_loads_the_rules_file() -> None:
    doc = load_yaml(ALERTS_TEST)
    files = [(ALERTS_TEST.parent / f).resolve() for f in doc["rule_files"]]
    assert ALERTS.resolve() in files


def test_runbook_has_a_section_for_every_alert() -> None:
    anchors = runbook_anchors()
    missing = sorted(n for n in alert_names() if n.lower() not in anchors)
    assert not missing, f"RUNBOOK.md lacks sections for {missing}"


# ----------------------------------------------------------------------------- metric names


def test_exported_metric_names_look_as_expected() -> None:
    """Guards the name derivation used below against prometheus_client changes."""
    exported = exported_metrics()
    assert "drd_backups_total" in exported
    assert {"plan", "source", "result"} <= exported["drd_backups_total"]
    assert "drd_backup_duration_seconds_bucket" in exported
    assert "le" in exported["drd_backup_duration_seconds_bucket"]
    assert "version" in exported["drd_build_info"]
    assert exported["drd_region_up"] == {"region"} | SCRAPE_LABELS


def test_alert_rules_use_only_exported_metrics_and_labels() -> None:
    exported = exported_metrics()
    problems = []
    for rule in alert_rules():
        where = f"alert {rule['alert']}"
        problems += check_promql_names(where, rule["expr"], exported)
        for key, text in (rule.get("annotations") or {}).items():
            problems += check_promql_names(f"{where} annotation {key}", text, exported)
    assert not problems, "\n".join(problems)


def test_up_is_only_used_for_the_drd_job() -> None:
    exprs = " ".join(r["expr"] for r in alert_rules())
    assert re.findall(r"\bup\s*\{([^}]*)\}", exprs), 'DrdDown must watch up{job="drd"}'
    for matchers in re.findall(r"\bup\s*\{([^}]*)\}", exprs):
        assert 'job="drd"' in matchers


def test_dashboard_uses_only_exported_metrics_and_labels() -> None:
    exported = exported_metrics()
    problems = []
    for where, expr in dashboard_exprs(dashboard()):
        problems += check_promql_names(where, expr, exported)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- dashboard


REQUIRED_PANELS = {
    # title fragment: (panel type, metrics that must appear in its queries)
    "RPO vs target": ("timeseries", {"drd_rpo_seconds", "drd_rpo_target_seconds"}),
    "RTO vs target": ("timeseries", {"drd_rto_seconds", "drd_rto_target_seconds"}),
    "Backup last status": ("stat", {"drd_backup_last_status"}),
    "Restore-test last status": ("stat", {"drd_restore_test_last_status"}),
    "Copies per region": (None, {"drd_backup_copies"}),
    "Backup sizes": ("timeseries", {"drd_backup_size_bytes", "drd_backup_source_bytes"}),
    "Backup duration": ("timeseries", {"drd_backup_duration_seconds_bucket"}),
    "oldest copy age": (
        "timeseries",
        {"drd_retention_oldest_copy_age_seconds", "drd_retention_max_age_seconds"},
    ),
    "Storage operations": ("timeseries", {"drd_storage_operations_total"}),
    "Plan review age": (None, {"drd_plan_review_age_seconds"}),
    "WAL archive lag": (
        "timeseries",
        {"drd_wal_archive_lag_bytes", "drd_wal_slot_retained_bytes"},
    ),
    "WAL receiver": ("stat", {"drd_wal_receiver_up"}),
}


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("plan", "source"):
        var = variables[name]
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert var["type"] == "query"
        assert re.fullmatch(rf"label_values\(.+,\s*{name}\)", query), query
        assert var["datasource"]["uid"] == "${DS_PROMETHEUS}"
    assert "$plan" in str(variables["source"]["query"]), "source should depend on plan"

    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dash):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


@pytest.mark.parametrize("fragment", sorted(REQUIRED_PANELS))
def test_dashboard_has_panel(fragment: str) -> None:
    kind, metrics = REQUIRED_PANELS[fragment]
    matching = [p for p in panels(dashboard()) if fragment.lower() in p["title"].lower()]
    assert matching, f"no panel titled like {fragment!r}"
    panel = matching[0]
    if kind:
        assert panel["type"] == kind, f"{panel['title']}: {panel['type']} instead of {kind}"
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert metrics <= set(METRIC_NAME.findall(exprs)), f"{panel['title']}: {exprs}"
    if fragment == "Backup duration":
        assert "histogram_quantile(" in exprs
    if "drd_rpo_seconds" in metrics:
        assert "$plan" in exprs and "$source" in exprs, "per-source panels filter on the variables"


def test_dashboard_keeps_daemons_apart() -> None:
    """job and instance variables, and every query filtered by both: two daemons (or two
    Prometheus jobs) never merge, and every aggregation keeps the instance."""
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names.index("job") < names.index("instance") < names.index("plan")
    for name in ("job", "instance"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert re.fullmatch(rf"label_values\(.+,\s*{name}\)", var["query"]["query"])
    assert '"$job"' in variables["instance"]["query"]["query"], "instance should depend on job"
    problems = []
    for where, expr in dashboard_exprs(dash):
        if where in ("variable job", "variable instance"):
            continue
        for metric in METRIC_NAME.findall(expr):
            for selector in re.findall(rf"\b{metric}\b(\{{[^{{}}]*\}})?", expr):
                if 'job=~"$job"' not in selector or 'instance=~"$instance"' not in selector:
                    problems.append(f"{where}: {metric}{selector} lacks the job/instance filter")
        for group in re.findall(r"\bby\s*\(([^()]*)\)", expr):
            if "instance" not in [label.strip() for label in group.split(",")]:
                problems.append(f"{where}: by ({group}) merges instances")
    assert not problems, "\n".join(problems)


def test_result_labels_use_the_one_vocabulary() -> None:
    """Alert rules and dashboard compare result="..." only with what drd exports."""
    texts = [r["expr"] for r in alert_rules()] + [e for _, e in dashboard_exprs(dashboard())]
    used = set()
    for text in texts:
        used |= set(re.findall(r"""\bresult\s*=~?\s*["']([^"']*)["']""", text))
    assert used, "the rules no longer look at results?"
    allowed = set(STORAGE_RESULTS)
    assert used <= allowed, sorted(used - allowed)
    assert set(RESULTS) <= allowed


def test_no_placeholder_hosts_in_the_kit() -> None:
    placeholder = re.compile(r"https?://[^/\s\"']*\bexample\.(com|org|net)|github\.com/example")
    for path in sorted(MONITORING.rglob("*")):
        if path.is_file() and "build" not in path.relative_to(MONITORING).parts:
            text = path.read_text(encoding="utf-8", errors="replace")
            assert not placeholder.search(text), f"{path.relative_to(REPO)}: placeholder host"


def render_kit(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(RENDER), "--runbook-url", url, "--out", str(tmp_path)])


def test_the_runbook_url_is_one_setting(promtool: str, tmp_path: Path) -> None:
    """monitoring/render.py fills the one setting into every file of the kit: every alert's
    runbook_url is that address plus the alert's anchor, the dashboard links to it, and the
    rendered files are still valid for Prometheus."""
    base = "https://git.corp.internal/sre/drd/-/blob/main/monitoring/RUNBOOK.md"
    out = tmp_path / "kit"
    assert_ok(render_kit(out, base))
    for path in out.rglob("*"):
        if path.is_file():
            assert RUNBOOK_TOKEN not in path.read_text(), path
    rules = load_yaml(out / "alerts.yml")
    anchors = runbook_anchors()
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        url = rule["annotations"]["runbook_url"]
        assert url == f"{base}#{rule['alert'].lower()}", url
        assert rule["alert"].lower() in anchors
    with (out / "grafana" / "drd.json").open() as fh:
        assert [link["url"] for link in json.load(fh)["links"]] == [base]
    assert_ok(run([promtool, "check", "config", str(out / "prometheus.yml")]))
    # The source files themselves are valid too (the token is literal text to Prometheus).
    assert_ok(run([promtool, "check", "config", str(PROMETHEUS)]))


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/example/drd/blob/main/monitoring/RUNBOOK.md",
        "https://wiki.example.org/drd",
        "https://runbooks.example/drd",
        "http://127.0.0.1/RUNBOOK.md",
        "https://git.corp.internal/RUNBOOK.md#drdrpobreached",
        "git.corp.internal/RUNBOOK.md",
    ],
)
def test_render_refuses_placeholders_and_unusable_urls(tmp_path: Path, url: str) -> None:
    proc = render_kit(tmp_path, url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "render.py:" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_prometheus_example_has_the_scrape_job_the_alerts_need() -> None:
    config = load_yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "drd" in jobs, 'DrdDown watches up{job="drd"}: the example must scrape job "drd"'
    assert jobs["drd"].get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in jobs["drd"]["static_configs"] for t in sc["targets"]]
    assert targets == [ApiConfig().listen], "the example scrapes drd's default listen address"
    assert [(MONITORING / f).resolve() for f in config["rule_files"]] == [ALERTS.resolve()]
    assert config["alerting"]["alertmanagers"], "alerts must go somewhere"


def route_for(route: dict[str, Any], labels: dict[str, str]) -> str:
    """The receiver Alertmanager picks for an alert with `labels` (first matching child, no
    `continue`), following the equality matchers the example uses."""
    for child in route.get("routes", []):
        matchers = dict(
            re.fullmatch(r'\s*(\w+)\s*=\s*"([^"]*)"\s*', m).groups()  # type: ignore[union-attr]
            for m in child["matchers"]
        )
        if all(labels.get(k) == v for k, v in matchers.items()):
            return route_for(child, labels) if child.get("routes") else str(child["receiver"])
    return str(route["receiver"])


def test_alertmanager_example_routes_every_alert_by_severity() -> None:
    config = load_yaml(ALERTMANAGER)
    receivers = {r["name"] for r in config["receivers"]}
    route = config["route"]
    assert {"job", "instance"} <= set(route["group_by"]), "daemons must not share a notification"
    by_severity = {sev: route_for(route, {"severity": sev}) for sev in SEVERITIES}
    assert len(set(by_severity.values())) == len(SEVERITIES), by_severity
    assert set(by_severity.values()) <= receivers
    for rule in alert_rules():
        labels = {"alertname": rule["alert"], **(rule.get("labels") or {})}
        assert route_for(route, labels) == by_severity[labels["severity"]], rule["alert"]
    for rule in config.get("inhibit_rules", []):
        for key in ("source_matchers", "target_matchers"):
            for matcher in rule[key]:
                name = re.fullmatch(r'alertname="(\w+)"', matcher)
                assert name is None or name.group(1) in alert_names(), matcher


def test_alertmanager_example_passes_amtool(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool (Debian: prometheus-alertmanager) not installed")
    assert_ok(run([amtool, "check-config", str(ALERTMANAGER)]))
    out = tmp_path / "kit"
    assert_ok(render_kit(out, "https://git.corp.internal/drd/RUNBOOK.md"))
    assert_ok(run([amtool, "check-config", str(out / "alertmanager.yml")]))
