"""The kind registry: names users may type, versions served."""

from __future__ import annotations

import pytest

from meshd.errors import NotFound
from meshd.schema.kinds import BY_KIND, KINDS, lookup_kind


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("VirtualService", "VirtualService"),
        ("virtualservice", "VirtualService"),
        ("VIRTUALSERVICES", "VirtualService"),
        ("vs", "VirtualService"),
        ("dr", "DestinationRule"),
        ("destinationrules", "DestinationRule"),
        ("se", "ServiceEntry"),
        ("serviceentries", "ServiceEntry"),
        ("sidecar", "Sidecar"),
        ("sidecars", "Sidecar"),
        ("pa", "PeerAuthentication"),
        ("ap", "AuthorizationPolicy"),
        ("authorizationpolicies", "AuthorizationPolicy"),
        ("ra", "RequestAuthentication"),
        ("virtualservices.networking.istio.io", "VirtualService"),
        (" PeerAuthentication ", "PeerAuthentication"),
    ],
)
def test_lookup_kind(text: str, kind: str) -> None:
    assert lookup_kind(text).kind == kind


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(NotFound) as exc:
        lookup_kind("gateway")
    assert "unknown kind 'gateway'" in exc.value.detail
    for info in KINDS:
        assert info.kind in exc.value.detail
    assert exc.value.context["known"] == [k.kind for k in KINDS]
    with pytest.raises(NotFound, match="did you mean VirtualService"):
        lookup_kind("virtualservic")


def test_versions_and_groups() -> None:
    vs = BY_KIND["VirtualService"]
    assert vs.api_version == "networking.istio.io/v1"
    assert vs.versions == ("v1", "v1beta1", "v1alpha3")
    assert vs.accepts("networking.istio.io/v1alpha3")
    assert not vs.accepts("security.istio.io/v1")
    pa = BY_KIND["PeerAuthentication"]
    assert pa.versions == ("v1", "v1beta1")
    assert not pa.accepts("security.istio.io/v1alpha3")
    for info in KINDS:
        assert info.model.model_fields["kind"].annotation is not str
