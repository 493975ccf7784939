"""Rules + endpoints -> one ProxySnapshot per sidecar. Pure functions; no I/O."""
