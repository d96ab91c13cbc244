"""Benchmarks: drd against the physical floor (pg_dump / pg_restore) and against the tools an
SRE would pick instead (pg_dump | gpg, restic, pgBackRest), measured side by side in one run.

`python -m bench --help` (or `make bench`) runs it; bench/RESULTS.md holds the last results.
"""
