"""The kinds meshd accepts: for each its API group, served versions, names and model.

``v1`` is the version meshd stores; ``v1beta1`` (and ``v1alpha3`` for networking) are
accepted as aliases, as the Kubernetes API server serves them for Istio's CRDs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from meshd.errors import NotFound
from meshd.schema.networking import (
    DestinationRule,
    IstioResource,
    ServiceEntry,
    Sidecar,
    VirtualService,
)
from meshd.schema.security import AuthorizationPolicy, PeerAuthentication, RequestAuthentication


@dataclass(frozen=True, slots=True)
class KindInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    model: type[IstioResource[Any]]

    @property
    def group(self) -> str:
        return self.model.group

    @property
    def versions(self) -> tuple[str, ...]:
        """Served versions; the first is the one stored."""
        return self.model.versions

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` resources of this kind are stored with."""
        return f"{self.group}/{self.versions[0]}"

    def accepts(self, api_version: str) -> bool:
        group, _, version = api_version.partition("/")
        return group == self.group and version in self.versions

    def names(self) -> tuple[str, ...]:
        """Every lowercase name this kind may be looked up by."""
        return (
            self.singular,
            self.plural,
            *self.short_names,
            f"{self.plural}.{self.group}",
            f"{self.singular}.{self.group}",
        )


KINDS: tuple[KindInfo, ...] = (
    KindInfo("VirtualService", "virtualservices", ("vs",), VirtualService),
    KindInfo("DestinationRule", "destinationrules", ("dr",), DestinationRule),
    KindInfo("ServiceEntry", "serviceentries", ("se",), ServiceEntry),
    KindInfo("Sidecar", "sidecars", ("sidecar",), Sidecar),
    KindInfo("PeerAuthentication", "peerauthentications", ("pa",), PeerAuthentication),
    KindInfo("AuthorizationPolicy", "authorizationpolicies", ("ap",), AuthorizationPolicy),
    KindInfo("RequestAuthentication", "requestauthentications", ("ra",), RequestAuthentication),
)

BY_KIND: dict[str, KindInfo] = {k.kind: k for k in KINDS}
_BY_NAME: dict[str, KindInfo] = {name: k for k in KINDS for name in k.names()}


def known_kinds() -> str:
    return ", ".join(k.kind for k in KINDS)


def lookup_kind(text: str) -> KindInfo:
    """The kind named by ``text``: its kind (any case), plural, singular or short name,
    optionally qualified by the group (``virtualservices.networking.istio.io``)."""
    info = _BY_NAME.get(text.strip().lower())
    if info is not None:
        return info
    close = difflib.get_close_matches(text.lower(), list(_BY_NAME), n=1)
    hint = f" (did you mean {_BY_NAME[close[0]].kind}?)" if close else ""
    raise NotFound(
        f"unknown kind {text!r}{hint}; meshd knows {known_kinds()} "
        "(also by plural or short name: vs, dr, se, sidecar, pa, ap, ra)",
        kind=text,
        known=[k.kind for k in KINDS],
    )
