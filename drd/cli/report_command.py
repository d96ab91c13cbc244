"""`drd report PLAN --since 90d [--out FILE] [--json]`: the auditor's page of every restore
test and drill of a plan in a window, read from what drd stored (drd.verify.evidence says
where); `--json` prints the same figures the page shows (drd.verify.figures).
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

from drd.cli.commands import Outcome, find_plan
from drd.cli.html_output import check_output, write_output
from drd.cli.output import print_json
from drd.clock import utcnow
from drd.config.loader import load_config
from drd.durations import DurationError, parse_duration
from drd.errors import StorageError, UsageError
from drd.runtime import keyring_for, open_regions
from drd.verify.drill import DRILLS_PREFIX


def parse_window(text: str) -> timedelta:
    try:
        window = parse_duration(text)
    except DurationError as exc:
        raise UsageError(f"--since: {exc}") from None
    if window <= timedelta(0):
        raise UsageError("--since: the window must be longer than 0s (e.g. 90d)")
    return window


async def report(
    config_path: Path | None,
    plan_name: str,
    keys: str | None,
    *,
    since: str,
    out: Path | None,
    as_json: bool,
) -> Outcome:
    """`drd report PLAN`: every restore test and drill of the plan in the window. A region
    that could not be read is named on the page, in the JSON and on stderr, and the command
    exits with StorageError's code once the page is written: its figures are a subset."""
    from drd.daemon.history import read_finished
    from drd.daemon.restore_test_loop import JOB_KIND
    from drd.verify.evidence import gather
    from drd.verify.evidence_html import render_evidence_html
    from drd.verify.figures import figures

    assert config_path is not None
    window = parse_window(since)
    if out is not None:
        check_output("--out", out)
    cfg = load_config(config_path)
    plan = find_plan(cfg, plan_name)
    keyring = keyring_for(cfg, keys)
    end = utcnow()
    start = end - window
    history_path = cfg.state_dir / "history.sqlite3"
    rows = read_finished(history_path, JOB_KIND, plan.name, start.timestamp())
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        found = await gather(plan, regions, keyring, start, rows)
    fig = figures(
        plan.name,
        found.runs,
        end=end,
        window=window,
        rto_target=plan.targets.rto.total_seconds(),
        rpo_target=plan.targets.rpo.total_seconds(),
    )
    for problem in found.problems:
        print(f"drd: warning: not counted: {problem}", file=sys.stderr)
    where_from = (
        f"Figures from the sealed reports stored in the plan's regions "
        f"({', '.join(plan.storage.regions)}): drill reports under {DRILLS_PREFIX}/{plan.name}/ "
        f"and restore test reports next to each backup under {plan.name}/<source>/<backup>/"
        f"restore-tests/; restore tests whose backups retention has destroyed, and tests that "
        f"could not run, from the daemon's job history {history_path}."
    )
    if as_json:
        data = {
            **fig.as_json(),
            "from": dict(found.counts),
            "not_counted": found.problems,
            "complete": found.complete,
            "regions_not_read": dict(found.regions_not_read),
        }
        if out is None:
            print_json(data)
        else:
            text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
            write_output("--out", out, text)
    else:
        page = render_evidence_html(
            fig,
            counts=found.counts,
            problems=found.problems,
            regions_not_read=found.regions_not_read,
            where_from=where_from,
        )
        if out is None:
            sys.stdout.write(page)
        else:
            write_output("--out", out, page)
    if found.complete:
        return None
    print(
        "drd: error: the report is incomplete: region(s) not read: "
        + ", ".join(sorted(found.regions_not_read)),
        file=sys.stderr,
    )
    return StorageError
