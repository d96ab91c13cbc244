"""`python -m bench` (what `make bench` runs); see bench/cli.py and bench/README.md."""

from bench.cli import main

raise SystemExit(main())
