"""The sidecar's Consul agent client (``--registry consul``) against a scripted agent (a
fake ``send``): it sends exactly what meshd's ``ConsulClient`` sends for the same writes,
with the token and datacenter; Consul's answers become the same typed errors; and the
registrar on top re-registers an instance the agent lost and says what an ACL refusal
needs. Against a real agent: ``test_registry_contract.py``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from registry.consul_api import encode_json
from registry.consul_http import ConsulClient
from registry.consul_meta import service_definition
from registry.consul_writer import ConsulWriter
from registry.errors import (
    ConsulNotFound,
    ConsulPermissionDenied,
    ConsulUnavailable,
    InvalidInstance,
)
from sidecar.agent import ConsulRegistrar, RegistryUnavailable, instance_of
from sidecar.consul_agent import ConsulAgentClient, consul_tls
from sidecar.control_client import HealthReport, Registration
from sidecar.errors import ConfigError, ConnectError
from sidecar.http_client import HttpRequest, HttpResponse
from tests.sidecar.test_identity_support import TestCa

AGENT = "http://127.0.0.1:8500"
PROXY = "reviews-1.default"
REGISTRATION = Registration(
    "reviews", "default", "127.0.0.1", 15006, 9080, "http", labels=(("version", "v1"),)
)
OK = HealthReport(True, "GET /healthz: 200 OK", 20.0)

Answer = Callable[[HttpRequest], HttpResponse]


class FakeAgent:
    """Answers each request with the next of ``answers`` (then 200), recording it."""

    def __init__(self, *answers: Answer | HttpResponse | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[HttpRequest] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else HttpResponse(200)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, HttpResponse):
            return answer
        return answer(request)


def registrar(agent: FakeAgent, token: str | None = None) -> ConsulRegistrar:
    return ConsulRegistrar(ConsulWriter(ConsulAgentClient(AGENT, token=token, send=agent)))


def test_register_then_report_sends_what_meshds_client_sends() -> None:
    """The same writes through meshd's httpx client and through the sidecar's client
    go out as the same requests: method, path, query, body, token."""
    instance = instance_of(PROXY, REGISTRATION)
    fake = FakeAgent()
    seen: list[httpx.Request] = []

    def consul(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async def write(writer: ConsulWriter) -> None:
        await writer.register(instance, ttl_s=20.0, output="GET /healthz: 200 OK")
        await writer.report_health(PROXY, False, "GET /healthz: 503 Service Unavailable")
        await writer.deregister(PROXY)

    async def main() -> None:
        await write(ConsulWriter(ConsulAgentClient(AGENT, token="s3cret", send=fake)))
        transport = httpx.MockTransport(consul)
        async with ConsulClient(AGENT, token="s3cret", transport=transport) as client:
            await write(ConsulWriter(client))

    trio.run(main)
    ours = [(r.method, r.url, r.body or b"", r.header("X-Consul-Token")) for r in fake.requests]
    theirs = [(r.method, str(r.url), r.content, r.headers.get("X-Consul-Token")) for r in seen]
    assert ours == theirs
    assert [(method, url.split("?")[0]) for method, url, _, _ in ours] == [
        ("PUT", f"{AGENT}/v1/agent/service/register"),
        ("PUT", f"{AGENT}/v1/agent/check/pass/service%3A{PROXY}"),
        ("PUT", f"{AGENT}/v1/agent/check/fail/service%3A{PROXY}"),
        ("PUT", f"{AGENT}/v1/agent/service/deregister/{PROXY}"),
    ]
    register = fake.requests[0]
    assert register.params == {"replace-existing-checks": "true"}
    assert register.body == encode_json(
        service_definition(instance, ttl_s=20.0, deregister_after_s=300.0)
    )
    assert fake.requests[2].params == {"note": "GET /healthz: 503 Service Unavailable"}


def test_the_datacenter_goes_with_every_request() -> None:
    fake = FakeAgent()

    async def main() -> None:
        client = ConsulAgentClient(AGENT, datacenter="dc2", send=fake)
        await client.agent_check_ttl("service:x", "warn", "slow")
        await client.agent_service_deregister("x")

    trio.run(main)
    assert [r.params.get("dc") for r in fake.requests] == ["dc2", "dc2"]
    assert fake.requests[0].params["note"] == "slow"


@pytest.mark.parametrize(
    ("answer", "error", "says"),
    [
        (HttpResponse.of(403, body=b"Permission denied"), ConsulPermissionDenied, "ACL token"),
        (HttpResponse.of(500, body=b"No cluster leader"), ConsulUnavailable, "No cluster leader"),
        (
            HttpResponse.of(500, body=b'CheckID "service:x" does not have associated TTL'),
            ConsulNotFound,
            "register the service (with its check) again",
        ),
        (
            HttpResponse.of(404, body=b'Unknown check "service:x"'),
            ConsulNotFound,
            "has no TTL check 'service:x'",
        ),
        (
            ConnectError("PUT", AGENT, "[Errno 111] Connection refused"),
            ConsulUnavailable,
            f"Consul at {AGENT} is unreachable (PUT /v1/agent/check/pass/service%3Ax: "
            "[Errno 111] Connection refused)",
        ),
    ],
)
def test_answers_become_the_registrys_typed_errors(
    answer: HttpResponse | Exception, error: type[Exception], says: str
) -> None:
    async def main() -> None:
        client = ConsulAgentClient(AGENT, send=FakeAgent(answer))
        with pytest.raises(error) as caught:
            await client.agent_check_ttl("service:x", "pass")
        assert says in str(caught.value)

    trio.run(main)


def test_a_lost_instance_is_registered_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeAgent(
        HttpResponse(200),  # register
        HttpResponse(200),  # its TTL update
        HttpResponse.of(500, body=b'Unknown check "service:reviews-1.default"'),  # report
    )

    async def main() -> None:
        consul = registrar(fake)
        await consul.register(PROXY, REGISTRATION, OK)
        await consul.report(PROXY, REGISTRATION, OK)

    trio.run(main)
    assert [r.path.rsplit("/", 1)[0] for r in fake.requests] == [
        "/v1/agent/service",
        "/v1/agent/check/pass",
        "/v1/agent/check/pass",
        "/v1/agent/service",  # registered again
        "/v1/agent/check/pass",
    ]
    assert "no longer holds instance reviews-1.default" in caplog.text


def test_an_acl_refusal_says_what_the_token_needs() -> None:
    fake = FakeAgent(HttpResponse.of(403, body=b"Permission denied"))

    async def main() -> None:
        consul = registrar(fake, token="t0k")
        with pytest.raises(RegistryUnavailable, match="needs service:write") as caught:
            await consul.register(PROXY, REGISTRATION, OK)
        assert caught.value.kind == "ConsulPermissionDenied"
        assert consul.last_error is not None

    trio.run(main)
    assert fake.requests[0].header("x-consul-token") == "t0k"


def test_meta_consul_refuses_is_an_invalid_instance() -> None:
    async def main() -> None:
        writer = ConsulWriter(
            ConsulAgentClient(AGENT, send=FakeAgent(HttpResponse.of(400, body=b"Invalid meta")))
        )
        with pytest.raises(InvalidInstance, match=r"Consul refused instance .*Invalid meta"):
            await writer.register(instance_of(PROXY, REGISTRATION))

    trio.run(main)


def test_deregistering_says_whether_it_was_registered() -> None:
    async def main() -> None:
        consul = registrar(FakeAgent())
        assert await consul.deregister(PROXY, timeout_s=1.0) is False
        await consul.register(PROXY, REGISTRATION, OK)
        assert await consul.deregister(PROXY, timeout_s=1.0) is True

    trio.run(main)


def test_the_tls_context_for_an_https_agent(tmp_path: Path) -> None:
    assert consul_tls("http://127.0.0.1:8500", None) is None
    assert consul_tls("127.0.0.1:8500", None) is None
    ca_file = tmp_path / "consul-ca.pem"
    ca_file.write_text(TestCa("consul CA").root_pem)
    context = consul_tls("https://consul.example:8501", ca_file)
    assert context is not None
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "consul CA"),),)]
    with pytest.raises(ConfigError, match=r"--consul-ca-file .* cannot load"):
        consul_tls("https://consul.example:8501", tmp_path / "missing.pem")
    client = ConsulAgentClient("consul.example:8501", tls=context)
    assert client.address == "https://consul.example:8501"
