#!/usr/bin/env python3
"""Write the monitoring kit with its one setting filled in: where RUNBOOK.md is published.

    python3 monitoring/render.py --runbook-url https://git.corp.internal/sre/drd/-/blob/main/monitoring/RUNBOOK.md
    make monitoring RUNBOOK_URL=https://...            # the same, into monitoring/build/

Every alert's runbook_url, the dashboard's runbook link and the Alertmanager example read
`${RUNBOOK_URL}`; this replaces that token (and only it: `$labels` and `$value` are Prometheus'
own) and writes the files to --out, ready to deploy:

    OUT/alerts.yml             rule_files: of Prometheus
    OUT/prometheus.yml         an example config: the `drd` scrape job, the rules, Alertmanager
    OUT/alertmanager.yml       an example route by severity
    OUT/grafana/drd.json       import into Grafana

`envsubst '$RUNBOOK_URL'` does the same substitution, if you prefer it. Standard library only,
so it runs wherever Python 3 does, without drd installed.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
SETTING = "${RUNBOOK_URL}"
#: kit files, relative to monitoring/
FILES = ("alerts.yml", "prometheus.yml", "alertmanager.yml", "grafana/drd.json")
#: host names reserved for documentation and tests (RFC 2606, RFC 6761): never a real runbook
RESERVED = ("example", "invalid", "test", "localhost")


def check_url(url: str) -> str:
    """The URL of RUNBOOK.md itself: http(s), a real host, no fragment (the anchors are added)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r}: expected an http(s) URL of RUNBOOK.md")
    if parts.fragment:
        raise ValueError(f"{url!r}: no #fragment; each alert adds its own anchor")
    host = parts.hostname.rstrip(".").lower()
    labels = host.split(".")
    owner = parts.path.strip("/").split("/")[0].lower()
    if labels[-1] in RESERVED or "example" in labels or owner == "example":
        raise ValueError(f"{url!r}: a placeholder, not where the runbook is")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a name, not an address
        return url
    if address.is_loopback or address.is_unspecified:
        raise ValueError(f"{url!r}: {host} is no use to whoever gets paged")
    return url


def render(text: str, runbook_url: str) -> str:
    return text.replace(SETTING, runbook_url)


def render_kit(runbook_url: str, out: Path, source: Path = HERE) -> list[Path]:
    runbook_url = check_url(runbook_url)
    written = []
    for name in FILES:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render((source / name).read_text(encoding="utf-8"), runbook_url))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runbook-url", required=True, help="where RUNBOOK.md is published")
    parser.add_argument("--out", type=Path, default=HERE / "build", help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        for path in render_kit(args.runbook_url, args.out):
            print(path)
    except ValueError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
