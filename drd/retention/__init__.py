"""Retention: the policy (a pure function), the sweep that destroys and proves it, repair of
missing copies, and what `drd prune`/`drd doctor` print about it."""
