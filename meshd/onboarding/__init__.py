"""Onboarding workloads into the mesh without writing sidecar definitions.

- :mod:`meshd.onboarding.plan` (pure): container labels -> the sidecar to run, and the
  reconciliation decisions (start, remove, report).
- :mod:`meshd.onboarding.docker`: the watcher behind ``meshd serve --docker-onboarding``
  (imports the Docker SDK; loaded only when that flag is on).

See docs/onboarding.md.
"""
