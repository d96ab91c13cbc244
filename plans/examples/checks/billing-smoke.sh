#!/bin/sh
# A command check of plans/examples/billing-postgres.yaml: drd restore-test runs it in the
# directory of drd.yaml with PGHOST, PGPORT, PGUSER, PGDATABASE (and PGPASSWORD when there is
# one) naming the restored copy, so plain psql reaches it. Exit 0 = passed; what it prints on
# stderr lands in the report. Replace the queries with what "the data is there" means to you.
set -eu
q() { psql -X -A -t -q -v ON_ERROR_STOP=1 -c "$1"; }

invoices=$(q "SELECT count(*) FROM public.invoices")
[ "$invoices" -gt 0 ] || { echo "the restored copy has no invoices" >&2; exit 1; }

orphans=$(q "SELECT count(*) FROM public.ledger l
             WHERE NOT EXISTS (SELECT 1 FROM public.invoices i WHERE i.id = l.invoice_id)")
[ "$orphans" -eq 0 ] || { echo "$orphans ledger entries name no invoice" >&2; exit 1; }
echo "$invoices invoices, every ledger entry has its invoice"
