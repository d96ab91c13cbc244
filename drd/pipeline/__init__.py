"""The data path, both ways: one backup (source -> zstd -> AES-256-GCM -> every region,
verified before its manifest is committed), one restore (any region's verified copy ->
strategy.restore), and one source's backup job with its lock and the clean-up of what an
interrupted one left (shared by the CLI and the daemon)."""
