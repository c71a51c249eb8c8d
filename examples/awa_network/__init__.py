"""Seed 000, the Awa Network: realm state files as aggregates, the carving log as the log, the
realm lock as a lease with fencing. Run ``python -m examples.awa_network [--url URL]`` or
``eventstore example awa_network``; see README.md beside this file."""
