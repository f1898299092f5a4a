"""A run's files: its directory (config, metrics, status, checkpoint), its lock, its manifest, the states
it and a study's cells can be in, and the claims of runs started elsewhere."""
