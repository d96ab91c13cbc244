"""The `drd` command line: the parser and exit codes (main), what each command does
(commands), and the demo sources `make run` backs up (demo_setup)."""
