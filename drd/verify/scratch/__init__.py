"""Scratch environments for restore tests: where a backup is restored to be checked, never the
source (guard). Each kind's module (ephemeral_postgres, postgres_server, tempdir, cloudsql_env)
has an async context manager that registers its resource before creating it and destroys it
however the block ends; `base` defines the ScratchEnv they yield and which module opens which
kind, `environment.open_scratch` picks the one a plan asks for; `registry` finds and removes
what a killed drd left behind."""
