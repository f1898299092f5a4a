"""``make bench``: env-steps/s, each worker against its bare limit, sync against async."""
