"""`drd run`: the service and its loops (backups, retention, restore tests, drills), their
schedule and job slots, job history and the systemd notify protocol."""
