"""The resource models (Istio's API shape), their parsing and validation.

Nothing is re-exported here on purpose: the sidecar imports ``meshd.schema.hosts``,
and importing this package must not pull in pydantic. Import from the modules:

- ``meshd.schema.networking`` / ``meshd.schema.security``: the models;
- ``meshd.schema.kinds``: ``KINDS``, ``lookup_kind``;
- ``meshd.schema.parse``: ``parse_documents``, ``parse_resource``, ``parse_many``;
- ``meshd.schema.validate``: ``validate_resource``, ``validate_set``, ``MeshNames``.
"""
