"""Parsing: Istio's documentation examples apply unchanged and read back equal; bad
bodies and bad resources are rejected naming the line, or the field and resource."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshd.errors import BadRequest, FieldError, ValidationFailed
from meshd.schema.base import dump
from meshd.schema.networking import DestinationRule, VirtualService
from meshd.schema.parse import parse_documents, parse_many, parse_resource
from meshd.schema.security import AuthorizationPolicy, PeerAuthentication

DATA = Path(__file__).parent / "data"
EXAMPLES = sorted(DATA.glob("*.yaml"))


def _wire(doc: dict[str, Any]) -> dict[str, Any]:
    """What a document reads back as: its JSON form, stored at the kind's first version."""
    out: dict[str, Any] = json.loads(json.dumps(doc))
    group = out["apiVersion"].split("/")[0]
    out["apiVersion"] = f"{group}/v1"
    return out


def _errors(exc: pytest.ExceptionInfo[ValidationFailed]) -> dict[str, str]:
    return {e.field: e.message for e in exc.value.errors}


def _one(text: str) -> dict[str, Any]:
    docs = parse_documents(text)
    assert len(docs) == 1
    return docs[0]


BOOKINFO_VS = (DATA / "bookinfo-reviews-virtualservice.yaml").read_text()


# --- Istio's examples ------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_istio_examples_parse_and_read_back_equal(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    resources = parse_many(path.read_text())
    assert len(resources) == len(docs)
    for doc, resource in zip(docs, resources, strict=True):
        assert dump(resource) == _wire(doc)
        again = parse_resource(dump(resource))
        assert again == resource


def test_bookinfo_reviews_models() -> None:
    vs = parse_resource(_one(BOOKINFO_VS))
    assert isinstance(vs, VirtualService)
    assert vs.key == ("VirtualService", "default", "reviews")
    first, second = vs.spec.http
    assert first.match[0].headers["end-user"].exact == "jason"
    assert first.route[0].destination.subset == "v2"
    assert [(d.destination.subset, d.weight) for d in second.route] == [("v1", 80), ("v3", 20)]

    dr = parse_resource(_one((DATA / "bookinfo-reviews-destinationrule.yaml").read_text()))
    assert isinstance(dr, DestinationRule)
    assert dr.spec.traffic_policy is not None
    assert dr.spec.traffic_policy.load_balancer is not None
    assert dr.spec.traffic_policy.load_balancer.simple == "LEAST_REQUEST"
    assert [s.name for s in dr.spec.subsets] == ["v1", "v2", "v3"]
    v2_policy = dr.spec.subsets[1].traffic_policy
    assert v2_policy is not None
    assert v2_policy.load_balancer is not None
    assert v2_policy.load_balancer.simple == "RANDOM"


def test_empty_security_specs_are_faithful() -> None:
    text = (DATA / "authorizationpolicies.yaml").read_text()
    allow_nothing = parse_many(text)[0]
    assert isinstance(allow_nothing, AuthorizationPolicy)
    assert allow_nothing.spec.rules == []
    assert allow_nothing.spec.action is None
    bare = parse_resource(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "x"},
        }
    )
    assert isinstance(bare, PeerAuthentication)
    assert bare.spec.mtls is None
    assert "spec" not in dump(bare)


def test_port_level_mtls_keys_are_ports() -> None:
    pa = parse_many((DATA / "peerauthentications.yaml").read_text())[1]
    assert isinstance(pa, PeerAuthentication)
    assert list(pa.spec.port_level_mtls) == [8080]


# --- versions and kinds ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1beta1", "v1alpha3"])
def test_networking_aliases_are_stored_as_v1(version: str) -> None:
    doc = _one(BOOKINFO_VS.replace("networking.istio.io/v1", f"networking.istio.io/{version}"))
    resource = parse_resource(doc)
    assert resource.api_version == "networking.istio.io/v1"
    assert dump(resource)["apiVersion"] == "networking.istio.io/v1"


def test_security_v1beta1_is_stored_as_v1() -> None:
    doc = {"apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy"}
    resource = parse_resource({**doc, "metadata": {"name": "deny"}, "spec": {"action": "DENY"}})
    assert resource.api_version == "security.istio.io/v1"


@pytest.mark.parametrize(
    ("api_version", "fragment"),
    [
        ("networking.istio.io/v2", "version 'v2' of networking.istio.io is not served"),
        ("security.istio.io/v1", "belongs to the API group 'networking.istio.io'"),
        ("v1", "must be '<group>/<version>'"),
        ("security.istio.io/v1alpha3", None),
    ],
)
def test_bad_api_version(api_version: str, fragment: str | None) -> None:
    doc = _one(BOOKINFO_VS) | {"apiVersion": api_version}
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    errors = _errors(exc)
    assert list(errors) == ["apiVersion"]
    if fragment is not None:
        assert fragment in errors["apiVersion"]
    assert "networking.istio.io/v1" in errors["apiVersion"]


def test_security_kind_does_not_take_v1alpha3() -> None:
    doc = {
        "apiVersion": "security.istio.io/v1alpha3",
        "kind": "PeerAuthentication",
        "metadata": {"name": "x"},
    }
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert "use security.istio.io/v1 (v1beta1 also accepted)" in _errors(exc)["apiVersion"]


def test_unknown_kind_suggests_the_right_case() -> None:
    doc = _one(BOOKINFO_VS) | {"kind": "virtualservice"}
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert "did you mean VirtualService?" in _errors(exc)["kind"]


def test_missing_kind_and_api_version() -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_resource({"metadata": {"name": "x"}}, 3)
    assert set(_errors(exc)) == {"apiVersion", "kind"}
    assert {e.resource for e in exc.value.errors} == {"document 4"}


# --- field errors ----------------------------------------------------------------------------


def test_unknown_field_is_named_with_its_path() -> None:
    doc = _one(BOOKINFO_VS)
    doc["spec"]["http"][1]["route"][0]["destination"]["subsett"] = "v1"
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert exc.value.errors == (
        FieldError(
            "spec.http[1].route[0].destination.subsett",
            "unknown field 'subsett'; did you mean 'subset'?",
            "VirtualService default/reviews",
        ),
    )


def test_snake_case_names_are_not_istio_names() -> None:
    text = (DATA / "bookinfo-reviews-destinationrule.yaml").read_text()
    doc = _one(
        text.replace("trafficPolicy:\n    loadBalancer", "traffic_policy:\n    loadBalancer")
    )
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert _errors(exc) == {
        "spec.traffic_policy": "unknown field 'traffic_policy'; did you mean 'trafficPolicy'?"
    }


def test_weights_summing_to_90_are_rejected() -> None:
    doc = _one(BOOKINFO_VS.replace("weight: 20", "weight: 10"))
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert _errors(exc) == {"spec.http[1].route": "weights sum to 90; they must sum to 100"}


def test_unsupported_field_is_rejected_by_name() -> None:
    doc = _one(BOOKINFO_VS)
    doc["spec"]["http"][0]["fault"] = {"abort": {"httpStatus": 500, "percentage": {"value": 10}}}
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert _errors(exc) == {
        "spec.http[0].fault": (
            "field 'fault' is not supported: fault injection is not implemented yet"
        )
    }


def test_bad_regex_names_the_regex_field() -> None:
    doc = _one(BOOKINFO_VS)
    doc["spec"]["http"][0]["match"][0]["uri"] = {"regex": "/api/(v1"}
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    errors = _errors(exc)
    assert list(errors) == ["spec.http[0].match[0].uri.regex"]
    assert errors["spec.http[0].match[0].uri.regex"].startswith(
        "invalid regular expression '/api/(v1': missing ), unterminated subpattern"
    )


def test_non_re2_regex_is_rejected() -> None:
    doc = _one(BOOKINFO_VS)
    doc["spec"]["http"][0]["match"][0]["headers"]["end-user"] = {"regex": "(a)\\1"}
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert "RE2" in _errors(exc)["spec.http[0].match[0].headers['end-user'].regex"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("80", "expected an integer, got '80'"),
        (True, "expected an integer, got true"),
        (-1, "must be greater than or equal to 0 (got -1)"),
    ],
)
def test_types_are_strict(value: object, message: str) -> None:
    doc = _one(BOOKINFO_VS)
    doc["spec"]["http"][1]["route"][0]["weight"] = value
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert _errors(exc) == {"spec.http[1].route[0].weight": message}


def test_missing_required_field_and_wrong_shapes() -> None:
    doc = _one(BOOKINFO_VS)
    del doc["spec"]["http"][0]["route"][0]["destination"]["host"]
    doc["spec"]["hosts"] = "reviews"
    doc["spec"]["http"][1]["match"] = [["uri"]]
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert _errors(exc) == {
        "spec.hosts": "expected a list, got 'reviews'",
        "spec.http[0].route[0].destination.host": "field 'host' is required",
        "spec.http[1].match[0]": "expected an object, got a list",
    }


def test_bad_enum_value_lists_the_choices() -> None:
    text = (DATA / "bookinfo-reviews-destinationrule.yaml").read_text()
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(_one(text.replace("simple: RANDOM", "simple: RANDOMLY")))
    message = _errors(exc)["spec.subsets[1].trafficPolicy.loadBalancer.simple"]
    assert message.startswith("invalid value 'RANDOMLY': use 'UNSPECIFIED', 'LEAST_CONN'")


def test_oneof_errors_are_on_the_message_path() -> None:
    doc = _one(BOOKINFO_VS)
    doc["spec"]["http"][0]["match"][0]["headers"]["end-user"] = {"exact": "a", "prefix": "b"}
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert _errors(exc) == {
        "spec.http[0].match[0].headers['end-user']": (
            "set only one of 'exact', 'prefix' or 'regex' (found 'exact', 'prefix')"
        )
    }


def test_kubectl_export_applies() -> None:
    doc = _one(BOOKINFO_VS)
    doc["metadata"] |= {
        "namespace": "bookinfo",
        "uid": "8d8c1b6e-3f0e-4b7e-9c53-7f3a4f0e2b9a",
        "generation": 3,
        "creationTimestamp": "2024-05-01T10:00:00Z",
        "resourceVersion": "12345",
    }
    doc["status"] = {"observedGeneration": 3}
    text = yaml.safe_dump(doc)
    resource = parse_many(text)[0]
    out = dump(resource)
    assert out["metadata"] == {
        "name": "reviews",
        "namespace": "bookinfo",
        "resourceVersion": "12345",
    }
    assert "status" not in out


def test_original_mongo_example_is_rejected_with_reasons() -> None:
    doc: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "external-svc-mongocluster"},
        "spec": {
            "hosts": ["mymongodb.somedomain"],
            "addresses": ["192.192.192.192/24"],
            "ports": [{"number": 27018, "name": "mongodb", "protocol": "MONGO"}],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "endpoints": [{"address": "2.2.2.2"}, {"address": "3.3.3.3"}],
        },
    }
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert "virtual IPs are not implemented yet" in _errors(exc)["spec.addresses"]
    doc["spec"].pop("addresses")
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert "protocol 'MONGO' is not supported yet" in _errors(exc)["spec.ports[0].protocol"]


# --- bodies ----------------------------------------------------------------------------------


def test_multi_document_yaml_skips_empty_documents() -> None:
    text = "---\n" + BOOKINFO_VS + "\n---\n\n---\n# just a comment\n---\n" + BOOKINFO_VS
    assert len(parse_documents(text)) == 2


def test_json_object_list_and_kubernetes_list() -> None:
    doc = _one(BOOKINFO_VS)
    assert parse_documents(json.dumps(doc), "application/json") == [doc]
    assert parse_documents(json.dumps([doc, doc]), "application/json; charset=utf-8") == [doc, doc]
    listing = {"apiVersion": "v1", "kind": "List", "items": [doc, doc]}
    assert parse_documents(json.dumps(listing), "application/json") == [doc, doc]
    assert parse_documents(yaml.safe_dump(listing)) == [doc, doc]
    assert parse_documents(json.dumps(doc).encode()) == [doc]


def test_yaml_errors_name_line_and_column() -> None:
    with pytest.raises(BadRequest) as exc:
        parse_documents("apiVersion: v1\nkind: [VirtualService\nmetadata: {}\n")
    assert exc.value.detail.startswith("invalid YAML at line 3, column 9")
    assert exc.value.context["line"] == 3


def test_json_errors_name_line_and_column() -> None:
    with pytest.raises(BadRequest) as exc:
        parse_documents('{"kind":\n  "VirtualService",,}', "application/json")
    assert exc.value.detail.startswith("invalid JSON at line 2, column 20")


def test_duplicate_keys_are_rejected() -> None:
    with pytest.raises(BadRequest) as exc:
        parse_documents("spec:\n  hosts: [a]\n  hosts: [b]\n")
    assert exc.value.detail == "invalid YAML at line 3, column 3: found duplicate key 'hosts'"
    with pytest.raises(BadRequest, match="appears twice"):
        parse_documents('{"a": 1, "a": 2}', "application/json")


def test_yaml_merge_keys_still_work() -> None:
    text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n"
    assert parse_documents(text) == [{"base": {"x": 1, "y": 2}, "derived": {"x": 1, "y": 3}}]


def test_timestamps_stay_strings() -> None:
    assert parse_documents("t: 2024-05-01T10:00:00Z\n") == [{"t": "2024-05-01T10:00:00Z"}]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- just\n- strings\n", "document 1 holds 'just', not a resource"),
        ("42\n", "document 1 holds 42"),
        ("kind: List\nitems: 3\n", "the 'items' of a List must be a list"),
        ("a: !!int nope\n", "invalid YAML"),
        ("a: !!python/object:os.system ls\n", "invalid YAML"),
        ("a: &a [*a]\n", "nests deeper than 64 levels"),
        ("[" * 5000 + "]" * 5000, "invalid YAML"),
    ],
)
def test_malformed_bodies(text: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_documents(text)
    assert fragment in exc.value.detail


def test_alias_bombs_are_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(BadRequest, match="more than 500000 values"):
        parse_documents("\n".join(lines) + "\n")


def test_bodies_that_are_not_text_or_not_a_known_type() -> None:
    with pytest.raises(BadRequest, match="not UTF-8"):
        parse_documents(b"\xff\xfe\x00")
    with pytest.raises(BadRequest, match="unsupported content type"):
        parse_documents("{}", "application/xml")
    with pytest.raises(BadRequest, match="NaN is not valid JSON"):
        parse_documents('{"a": NaN}', "application/json")


def test_parse_many_collects_every_error_of_every_document() -> None:
    bad_weights = BOOKINFO_VS.replace("weight: 20", "weight: 10")
    text = "\n---\n".join(
        [
            BOOKINFO_VS.replace("name: reviews", "name: ok"),
            bad_weights,
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {}\n",
        ]
    )
    with pytest.raises(ValidationFailed) as exc:
        parse_many(text)
    assert exc.value.detail == "3 of 4 resources are invalid"
    by_resource = {(e.resource, e.field) for e in exc.value.errors}
    assert by_resource == {
        ("VirtualService default/reviews", "spec.http[1].route"),
        ("Gateway default/gw", "kind"),
        ("document 4", "metadata"),
    }


def test_a_batch_holds_each_resource_once() -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_many(BOOKINFO_VS + "\n---\n" + BOOKINFO_VS)
    (error,) = exc.value.errors
    assert error.resource == "document 2"
    assert "also document 1" in error.message


def test_default_namespace_fills_in_a_missing_one() -> None:
    other = BOOKINFO_VS.replace("name: reviews", "name: other\n  namespace: elsewhere")
    first, second = parse_many(BOOKINFO_VS + "---\n" + other, default_namespace="bookinfo")
    assert first.key == ("VirtualService", "bookinfo", "reviews")
    assert dump(first)["metadata"] == {"name": "reviews", "namespace": "bookinfo"}
    assert second.key == ("VirtualService", "elsewhere", "other")
    with pytest.raises(ValidationFailed) as exc:
        parse_many(BOOKINFO_VS.replace("weight: 20", "weight: 0"), default_namespace="shop")
    assert exc.value.errors[0].resource == "VirtualService shop/reviews"


def test_parse_resource_rejects_non_mappings() -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(["not", "a", "mapping"], 0)
    assert exc.value.errors[0].resource == "document 1"
    assert "got a list" in exc.value.errors[0].message
