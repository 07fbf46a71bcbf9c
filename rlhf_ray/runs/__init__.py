"""A run's records: its directory (claimed for one run), checkpoints (atomic commit, safe loading),
metrics sinks and stage timers (tracking), and the report drawn from them."""
