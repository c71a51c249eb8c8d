"""Seed 001, Paddler: the request lifecycle machine, desired state from three sources resolved
by priority, a reconciler bringing agents toward it, the state dump, a diff. Run ``python -m
examples.paddler [--url URL]`` or ``eventstore example paddler``; see README.md beside this
file."""
