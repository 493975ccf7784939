"""The Consul Meta format of an instance (``registry.consul_meta``): round trips, Consul's
limits, health from checks."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.consul_meta import (
    LABEL_PREFIX,
    check_id,
    decode_label_key,
    encode_label_key,
    health_of,
    instance_from_entry,
    instance_meta,
    service_definition,
    ttl_text,
)
from registry.errors import InvalidInstance
from registry.model import Instance, sorted_labels

CONSUL_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def inst(**kw: Any) -> Instance:
    fields: dict[str, Any] = {
        "id": "reviews-1.prod",
        "service": "reviews",
        "namespace": "prod",
        "address": "198.18.0.7",
        "port": 15006,
        "app_port": 9080,
        "protocol": "http2",
        "labels": sorted_labels({"version": "v2", "app.kubernetes.io/name": "reviews"}),
        "service_account": "bookinfo-reviews",
    }
    fields.update(kw)
    return Instance(**fields)


def entry(instance: Instance, checks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    definition = service_definition(instance, ttl_s=20, deregister_after_s=300)
    return {
        "Node": {"Node": "vm1", "Address": "198.18.0.1"},
        "Service": {
            "ID": definition["ID"],
            "Service": definition["Name"],
            "Address": definition["Address"],
            "Port": definition["Port"],
            "Meta": definition["Meta"],
        },
        "Checks": checks
        if checks is not None
        else [
            {"CheckID": "serfHealth", "Status": "passing", "Output": "Agent alive"},
            {
                "CheckID": check_id(instance.id),
                "ServiceID": instance.id,
                "Status": "passing" if instance.healthy else "critical",
                "Output": "fine" if instance.healthy else "503",
            },
        ],
    }


@given(st.text(min_size=1, max_size=40))
def test_label_keys_round_trip_and_are_valid_meta_keys(key: str) -> None:
    encoded = encode_label_key(key)
    assert CONSUL_KEY.match(encoded)
    assert decode_label_key(encoded) == key


def test_label_key_encoding_is_readable() -> None:
    assert encode_label_key("version") == "version"
    assert encode_label_key("app.kubernetes.io/name") == "app_2Ekubernetes_2Eio_2Fname"
    assert encode_label_key("a_b") == "a_5Fb"
    with pytest.raises(ValueError, match="bad escape"):
        decode_label_key("a_zz")


def test_the_meta_format() -> None:
    assert instance_meta(inst()) == {
        "mesh-namespace": "prod",
        "mesh-app-port": "9080",
        "mesh-protocol": "http2",
        "mesh-meshed": "true",
        "mesh-service-account": "bookinfo-reviews",
        "mesh-label-version": "v2",
        "mesh-label-app_2Ekubernetes_2Eio_2Fname": "reviews",
    }
    definition = service_definition(inst(healthy=False), ttl_s=20, deregister_after_s=300)
    assert definition["ID"] == "reviews-1.prod"
    assert definition["Name"] == "reviews"
    assert (definition["Address"], definition["Port"]) == ("198.18.0.7", 15006)
    assert definition["Check"] == {
        "CheckID": "service:reviews-1.prod",
        "Name": "mesh sidecar: app health",
        "Notes": "renewed by the instance's sidecar (meshd TTL check)",
        "TTL": "20000ms",
        "DeregisterCriticalServiceAfter": "300000ms",
        "Status": "critical",
    }
    assert ttl_text(0.0001) == "1ms"


@pytest.mark.parametrize("healthy", [True, False])
def test_instances_round_trip_through_a_health_entry(healthy: bool) -> None:
    original = inst(healthy=healthy)
    parsed = instance_from_entry(entry(original))
    assert parsed is not None
    assert parsed[0] == original
    assert parsed[1] == ("fine" if healthy else "503")


def test_defaults_for_a_hand_written_registration() -> None:
    """What a Consul user writes by hand: only mesh-namespace; no Address (the node's)."""
    raw = {
        "Node": {"Node": "vm1", "Address": "198.18.0.1"},
        "Service": {
            "ID": "legacy-1",
            "Service": "legacy",
            "Port": 8080,
            "Meta": {"mesh-namespace": "default"},
        },
        "Checks": [],
    }
    parsed = instance_from_entry(raw)
    assert parsed is not None
    got = parsed[0]
    assert (got.address, got.port, got.app_port) == ("198.18.0.1", 8080, 8080)
    assert (got.protocol, got.meshed, got.healthy, got.labels) == ("http", True, True, ())
    assert got.account == "legacy"


def test_services_without_mesh_meta_are_not_ours() -> None:
    raw = {"Node": {}, "Service": {"ID": "consul", "Service": "consul", "Port": 8300}}
    assert instance_from_entry(raw) is None


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"mesh-namespace": "Prod"}, "not a DNS label"),
        ({"mesh-namespace": "prod", "mesh-app-port": "http"}, "not a port number"),
        ({"mesh-namespace": "prod", "mesh-app-port": "70000"}, "out of range"),
        ({"mesh-namespace": "prod", "mesh-protocol": "udp"}, "mesh-protocol"),
        ({"mesh-namespace": "prod", "mesh-meshed": "yes"}, "true or false"),
        ({"mesh-namespace": "prod", "mesh-label-a_zz": "1"}, "bad escape"),
    ],
)
def test_malformed_meta_is_reported(meta: dict[str, str], message: str) -> None:
    raw = {
        "Node": {"Address": "198.18.0.1"},
        "Service": {"ID": "x-1", "Service": "x", "Port": 1, "Meta": meta},
    }
    with pytest.raises(ValueError, match=message):
        instance_from_entry(raw)


def test_consul_limits_are_checked_before_sending() -> None:
    too_many = sorted_labels({f"l{i}": "v" for i in range(60)})
    with pytest.raises(InvalidInstance, match="room for 59 labels"):
        instance_meta(inst(labels=too_many))
    assert len(instance_meta(inst(labels=too_many[:59]))) == 64
    with pytest.raises(InvalidInstance, match="too long") as caught:
        instance_meta(inst(labels=sorted_labels({"k" * 118: "v"})))
    assert caught.value.field == "labels." + "k" * 118
    assert len(LABEL_PREFIX + "k" * 117) == 128
    instance_meta(inst(labels=sorted_labels({"k" * 117: "v"})))
    with pytest.raises(InvalidInstance, match="at most 512"):
        instance_meta(inst(labels=sorted_labels({"k": "v" * 513})))


def test_health_is_the_worst_check() -> None:
    own = {"CheckID": "service:a", "ServiceID": "a", "Status": "passing", "Output": "ok"}
    node = {"CheckID": "serfHealth", "Status": "passing", "Output": "alive"}
    assert health_of([], "a") == (True, "")
    assert health_of([node, own], "a") == (True, "ok")
    assert health_of([node, {**own, "Status": "warning", "Output": "slow"}], "a") == (False, "slow")
    assert health_of([{**node, "Status": "critical", "Output": "node down"}, own], "a") == (
        False,
        "node down",
    )
    maintenance = {"CheckID": "_service_maintenance:a", "ServiceID": "a", "Status": "critical"}
    assert health_of([node, own, maintenance], "a")[0] is False
