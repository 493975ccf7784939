from __future__ import annotations

import pytest

from meshd.schema.hosts import host_aliases, resolve_host, split_service_fqdn


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("reviews", "reviews.bookinfo.svc.cluster.local"),
        ("reviews.default", "reviews.default.svc.cluster.local"),
        ("reviews.default.svc", "reviews.default.svc.cluster.local"),
        ("reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local"),
        ("Reviews.Default.", "reviews.default.svc.cluster.local"),
        ("api.example.com", "api.example.com"),
        ("example.com", "example.com"),
    ],
)
def test_resolve_host(host: str, expected: str) -> None:
    assert resolve_host(host, "bookinfo", literal_hosts={"example.com"}) == expected


def test_split_and_aliases() -> None:
    assert split_service_fqdn("reviews.default.svc.cluster.local") == ("default", "reviews")
    assert split_service_fqdn("api.example.com") is None
    assert host_aliases("reviews", "default")[0] == "reviews.default.svc.cluster.local"
