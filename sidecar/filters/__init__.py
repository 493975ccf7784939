"""The sidecar's HTTP filters, one module each: a frozen config compiled once from the
snapshot and a pure function applied per request (:mod:`sidecar.filters.authz`)."""
