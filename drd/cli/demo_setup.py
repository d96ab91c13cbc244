"""Create the demo sources `make run` backs up: a small SQLite database and a directory.

Idempotent: an existing demo is left alone (and grows by one order per run, so successive
backups differ).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

DEMO = Path(".drd/demo")


def setup(root: Path = DEMO) -> None:
    # The two local regions of drd.yaml: drd refuses to create a missing region root itself
    # (a missing root is usually an unmounted volume), so the demo creates them.
    for region in ("a", "b"):
        (root.parent / "regions" / region).mkdir(parents=True, exist_ok=True)
    uploads = root / "uploads"
    (uploads / "invoices" / "2026").mkdir(parents=True, exist_ok=True)
    (uploads / "empty").mkdir(exist_ok=True)
    readme = uploads / "README.txt"
    if not readme.exists():
        readme.write_text("Demo file store backed up by `make run`.\n", encoding="utf-8")
        for i in range(1, 6):
            (uploads / "invoices" / "2026" / f"INV-{i:04d}.txt").write_text(
                f"invoice {i}\ncustomer: Zürich GmbH\namount: {i * 100}.00 EUR\n", encoding="utf-8"
            )
        link = uploads / "latest"
        if not link.is_symlink():
            link.symlink_to("invoices/2026/INV-0005.txt")
    with sqlite3.connect(root / "app.sqlite3") as db:
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS orders (
                id INTEGER PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(id),
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
                total_cents INTEGER NOT NULL
            );
            INSERT OR IGNORE INTO customers (id, name)
                VALUES (1, 'Zürich GmbH'), (2, '東京 Trading'), (3, 'ACME Ltd');
            """
        )
        db.execute(
            "INSERT INTO orders (customer_id, total_cents) VALUES (?, ?)",
            (1 + db.execute("SELECT count(*) FROM orders").fetchone()[0] % 3, 4200),
        )


if __name__ == "__main__":
    setup(Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO)
    print(f"demo sources ready in {DEMO}/")
