"""``mesh-sidecar run --workers N``: N processes serving the proxy's ports.

- :mod:`.channel` — the control channel's frames and payloads (sans-IO);
- :mod:`.link` — that channel on Trio;
- :mod:`.supervisor` — in the main process: starts, feeds, restarts and drains the
  workers; gates the ACK of a config on every worker applying it; sums their metrics;
- :mod:`.child` — a worker process (``python -m sidecar.workers``).

See docs/sidecar.md ("Worker processes").
"""
