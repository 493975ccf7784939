"""Properties of the models as a whole: Istio's names, documented fields."""

from __future__ import annotations

import re
from collections import deque

from pydantic import BaseModel

from meshd.schema.base import unsupported_reason
from meshd.schema.kinds import KINDS
from meshd.schema.reference import _nested

_CAMEL = re.compile(r"^[a-z][A-Za-z0-9]*$")


def _all_models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    queue: deque[type[BaseModel]] = deque(info.model for info in KINDS)
    while queue:
        model = queue.popleft()
        if model in seen:
            continue
        seen.append(model)
        for info in model.model_fields.values():
            queue.extend(_nested(info.annotation))
    return seen


def test_every_spec_field_has_istio_wire_name_and_a_docstring() -> None:
    missing: list[str] = []
    for model in _all_models():
        if model.__module__ == "meshd.schema.base":
            continue
        assert model.__doc__, f"{model.__name__} has no docstring"
        for name, info in model.model_fields.items():
            wire = info.alias or name
            if name in {"api_version", "kind", "metadata", "spec", "status"}:
                continue
            if wire != "jwks_uri":
                assert _CAMEL.match(wire), f"{model.__name__}.{name} is {wire!r} on the wire"
            if not info.description:
                missing.append(f"{model.__name__}.{wire}")
            reason = unsupported_reason(model, name)
            assert reason is None or len(reason) > 10
    assert missing == []


def test_istio_message_names() -> None:
    names = {m.__name__ for m in _all_models()}
    expected = {
        "VirtualServiceSpec", "HTTPRoute", "HTTPMatchRequest", "StringMatch",
        "HTTPRouteDestination", "RouteDestination", "Destination", "PortSelector",
        "HTTPRewrite", "RegexRewrite", "HTTPRedirect", "HTTPDirectResponse", "HTTPBody",
        "HTTPRetry", "Headers", "HeaderOperations", "TCPRoute", "L4MatchAttributes",
        "TLSRoute", "TLSMatchAttributes", "Delegate", "HTTPFaultInjection", "CorsPolicy",
        "Percent", "TrafficPolicy", "Subset", "LoadBalancerSettings", "ConsistentHashLB",
        "ConnectionPoolSettings", "OutlierDetection", "ClientTLSSettings",
        "LocalityLoadBalancerSetting", "WorkloadSelector", "ServiceEntrySpec", "ServicePort",
        "WorkloadEntry", "SidecarSpec", "IstioEgressListener", "IstioIngressListener",
        "OutboundTrafficPolicy", "PeerAuthenticationSpec", "MutualTLS",
        "AuthorizationPolicySpec", "Rule", "Source", "Operation", "Condition",
        "RequestAuthenticationSpec", "JWTRule",
    }  # fmt: skip
    assert expected <= names


def test_models_are_frozen() -> None:
    for model in _all_models():
        assert model.model_config.get("frozen") is True, model.__name__
