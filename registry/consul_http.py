"""A small async client for Consul's HTTP API (v1, as served by Consul 1.8).

Written on httpx + anyio so the same code runs in meshd (asyncio) and in the sidecar
(Trio). It covers what meshd needs today: the KV store (get, list, keys, put/delete with
``cas``), transactions (``PUT /v1/txn``), blocking queries (``index`` + ``wait``) with
a reusable :meth:`ConsulClient.watch` loop, and the service-discovery endpoints the
registry needs: agent service registration and deregistration, TTL check updates,
``/v1/catalog/services``, ``/v1/health/service/<name>`` and ``/v1/health/state/<state>``.
Each endpoint is a thin method on top of :meth:`ConsulClient.request` /
:meth:`ConsulClient.query` / :meth:`ConsulClient.watch`. The agent endpoints a registrar
writes to, and the mapping of answers to errors, are :mod:`registry.consul_api`'s (the
sidecar sends the same requests with its own HTTP client).

Errors are typed (``registry.errors``): :class:`ConsulUnavailable` when Consul cannot be
reached or has no leader (worth retrying), :class:`ConsulPermissionDenied` for ACL
refusals, :class:`ConsulNotFound` when the agent does not know a service or check,
:class:`TxnAborted` when a transaction's precondition failed,
:class:`TxnTooLarge` over Consul's limits, :class:`ConsulClientClosed` after ``aclose``,
and :class:`ConsulError` (with ``status`` and ``body``) for anything else.
"""

from __future__ import annotations

import base64
import json
import random
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import anyio
import httpx

from registry.consul_api import (
    CHECK_TTL_ACCEPT,
    DEFAULT_ADDRESS,
    ApiCall,
    CheckStatus,
    base_url,
    body_excerpt,
    check_ttl_call,
    check_ttl_missing,
    encode_json,
    error_for,
    service_deregister_call,
    service_register_call,
    unreachable,
)
from registry.errors import (
    ConsulClientClosed,
    ConsulError,
    ConsulPermissionDenied,
    ConsulUnavailable,
    TxnAborted,
    TxnOpError,
    TxnTooLarge,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "MAX_TXN_OPS",
    "Backoff",
    "CheckStatus",
    "ConsulClient",
    "KVOp",
    "KVPair",
    "QueryResult",
    "TxnResult",
    "base_url",
    "health_service_path",
    "parse_list",
    "parse_services",
]

MAX_TXN_OPS = 64
"""Consul 1.8 rejects a transaction with more operations than this (HTTP 413)."""

MAX_WAIT = 600.0
"""Consul caps a blocking query's ``wait`` at 10 minutes."""

DEFAULT_WAIT = 300.0

Consistency = Literal["default", "consistent", "stale"]
TxnVerb = Literal[
    "set",
    "cas",
    "get",
    "get-tree",
    "check-index",
    "check-not-exists",
    "delete",
    "delete-tree",
    "delete-cas",
]

T = TypeVar("T")

# Jitter only spreads retries out; it needs no cryptographic quality.
_jitter = random.Random()  # noqa: S311


@dataclass(frozen=True, slots=True)
class KVPair:
    """One KV entry. ``value`` is ``None`` when the key holds no data.

    The value stays base64 (as Consul sends it) until read: a consumer that skips entries
    whose ``modify_index`` it has seen (a watch over thousands of keys) never decodes them.
    """

    key: str
    encoded_value: str | None
    modify_index: int
    create_index: int = 0
    lock_index: int = 0
    flags: int = 0
    session: str | None = None

    @property
    def value(self) -> bytes | None:
        return base64.b64decode(self.encoded_value) if self.encoded_value is not None else None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> KVPair:
        return cls(
            raw["Key"],
            raw.get("Value"),
            raw.get("ModifyIndex", 0),
            raw.get("CreateIndex", 0),
            raw.get("LockIndex", 0),
            raw.get("Flags", 0),
            raw.get("Session"),
        )


@dataclass(frozen=True, slots=True)
class QueryResult(Generic[T]):
    """A read's value with Consul's query metadata. ``index`` is ``X-Consul-Index``: pass
    it back as ``index=`` to block until something changes."""

    value: T
    index: int
    known_leader: bool = True
    last_contact_ms: int = 0


@dataclass(frozen=True, slots=True)
class KVOp:
    """One KV operation of a transaction. Build them with the class methods."""

    verb: TxnVerb
    key: str
    value: bytes | None = None
    index: int | None = None
    flags: int | None = None

    @classmethod
    def set(cls, key: str, value: bytes, *, flags: int | None = None) -> KVOp:
        return cls("set", key, value=value, flags=flags)

    @classmethod
    def cas(cls, key: str, value: bytes, *, index: int, flags: int | None = None) -> KVOp:
        """Set only if the key's ModifyIndex is ``index`` (0: only if it does not exist)."""
        return cls("cas", key, value=value, index=index, flags=flags)

    @classmethod
    def get(cls, key: str) -> KVOp:
        """Read the key; the whole transaction fails if it does not exist."""
        return cls("get", key)

    @classmethod
    def get_tree(cls, prefix: str) -> KVOp:
        return cls("get-tree", prefix)

    @classmethod
    def check_index(cls, key: str, *, index: int) -> KVOp:
        """Fail the transaction unless the key exists with ModifyIndex ``index``."""
        return cls("check-index", key, index=index)

    @classmethod
    def check_not_exists(cls, key: str) -> KVOp:
        return cls("check-not-exists", key)

    @classmethod
    def delete(cls, key: str) -> KVOp:
        return cls("delete", key)

    @classmethod
    def delete_tree(cls, prefix: str) -> KVOp:
        return cls("delete-tree", prefix)

    @classmethod
    def delete_cas(cls, key: str, *, index: int) -> KVOp:
        """Delete only if the key's ModifyIndex is ``index``."""
        return cls("delete-cas", key, index=index)

    def to_json(self) -> dict[str, Any]:
        kv: dict[str, Any] = {"Verb": self.verb, "Key": self.key}
        if self.value is not None:
            kv["Value"] = base64.b64encode(self.value).decode("ascii")
        if self.index is not None:
            kv["Index"] = self.index
        if self.flags is not None:
            kv["Flags"] = self.flags
        return {"KV": kv}


@dataclass(frozen=True, slots=True)
class TxnResult:
    """The KV entries a committed transaction returned (for ``set``/``cas``/``get``...,
    in operation order; deletes and checks return none)."""

    results: tuple[KVPair, ...]

    def entry(self, key: str) -> KVPair | None:
        for pair in self.results:
            if pair.key == key:
                return pair
        return None


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter: the n-th delay is drawn from
    ``[d/2, d]`` with ``d = min(maximum, initial * 2**n)``, so many clients that failed
    together do not retry together."""

    initial: float = 0.2
    maximum: float = 30.0
    attempts: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2.0 ** min(self.attempts, 32)))
        self.attempts += 1
        return ceiling / 2 + _jitter.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempts = 0


OnError = Callable[[ConsulError, float], None]
"""Called by :meth:`ConsulClient.watch` with the error and the delay before the retry."""


class ConsulClient:
    """An async Consul HTTP API client; one per process is enough (it pools connections).

    ``address`` is ``host:port`` or a URL (``https://consul:8501``). ``token`` is sent as
    ``X-Consul-Token``. For TLS, ``ca_file`` is the CA that signed Consul's certificate,
    ``cert_file``/``key_file`` a client certificate when Consul verifies incoming
    connections, and ``verify=False`` disables verification (tests only).
    ``max_connections`` bounds the pool: each blocking query in flight holds one
    connection, so a client that watches many services at once needs one per watch (and
    Consul's ``limits.http_max_conns_per_client``, 200 by default, must allow them).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        datacenter: str | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        verify: bool = True,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        tls = ca_file is not None or cert_file is not None
        self.address = base_url(address, https=tls)
        self.datacenter = datacenter
        self.timeout = timeout
        headers = {"User-Agent": "meshd-consul-client"}
        if token:
            headers["X-Consul-Token"] = token
        verify_arg: ssl.SSLContext | bool = verify
        if verify and (ca_file is not None or cert_file is not None):
            ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if cert_file is not None:
                ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
            verify_arg = ctx
        self._http = httpx.AsyncClient(
            base_url=self.address,
            headers=headers,
            verify=verify_arg,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            # Consul runs next to us; a proxy from the environment would only get in the way.
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ConsulClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- the generic layer every endpoint is built on --------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        json_body: Any = None,
        request_timeout: float | None = None,
        accept: Collection[int] = (),
    ) -> httpx.Response:
        """Send one request to ``/v1/...``; return the response on 2xx or a status in
        ``accept``, else raise the matching typed error."""
        query: dict[str, str | int] = dict(params or {})
        if self.datacenter and "dc" not in query:
            query["dc"] = self.datacenter
        if self._http.is_closed:
            raise ConsulClientClosed(
                f"the client for Consul at {self.address} is closed; {method} {path} not sent",
                address=self.address,
                method=method,
                path=path,
            )
        if json_body is not None:
            content = encode_json(json_body)
        try:
            response = await self._http.request(
                method,
                path,
                params=query,
                content=content,
                timeout=(
                    httpx.Timeout(request_timeout)
                    if request_timeout is not None
                    else httpx.USE_CLIENT_DEFAULT
                ),
            )
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise unreachable(self.address, method, path, reason) from exc
        status = response.status_code
        if 200 <= status < 300 or status in accept:
            return response
        raise self._error(method, path, response)

    def _error(self, method: str, path: str, response: httpx.Response) -> ConsulError:
        return error_for(
            self.address, method, path, response.status_code, body_excerpt(response.text)
        )

    async def query(
        self,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        index: int = 0,
        wait: float | None = None,
        consistency: Consistency = "default",
        allow_404: bool = False,
    ) -> QueryResult[Any]:
        """A read that supports blocking: with ``index > 0`` Consul holds the request until
        the result's index passes ``index`` or ``wait`` seconds elapse (it adds up to
        wait/16 of jitter). The value is the decoded JSON body, ``None`` on an allowed 404.
        """
        query: dict[str, str | int] = dict(params or {})
        timeout = self.timeout
        if index > 0:
            query["index"] = index
            effective = min(wait if wait is not None else DEFAULT_WAIT, MAX_WAIT)
            query["wait"] = f"{max(1, int(effective * 1000))}ms"
            # Consul answers after wait + up to wait/16; the read timeout must outlast that.
            timeout = effective + effective / 16 + self.timeout
        if consistency != "default":
            query[consistency] = ""
        response = await self.request(
            "GET", path, params=query, request_timeout=timeout, accept=(404,) if allow_404 else ()
        )
        value = None if response.status_code == 404 or not response.content else response.json()
        headers = response.headers
        return QueryResult(
            value=value,
            index=_int_header(headers.get("X-Consul-Index")),
            known_leader=headers.get("X-Consul-KnownLeader", "true") == "true",
            last_contact_ms=_int_header(headers.get("X-Consul-LastContact")),
        )

    async def watch(
        self,
        path: str,
        parse: Callable[[Any], T],
        *,
        params: Mapping[str, str | int] | None = None,
        wait: float = DEFAULT_WAIT,
        allow_404: bool = False,
        on_error: OnError | None = None,
        on_recover: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        min_interval: float = 0.05,
    ) -> AsyncGenerator[QueryResult[T], None]:
        """Follow a blocking query: yield the current result at once, then a new one each
        time ``X-Consul-Index`` changes. Runs until the consumer stops iterating.

        Follows Consul's rules for clients: an index that goes backwards (a restored
        snapshot, a new cluster) restarts from 0; an index of 0 is treated as 1; a query
        that returns early without a change is rate-limited to one per ``min_interval``.
        Unavailability and ACL refusals are retried with ``backoff`` (after telling
        ``on_error``), the first retry without blocking; ``on_recover`` is called on the
        first success after a failure, whose result is always yielded.
        Other errors (a malformed request) are raised.
        """
        backoff = backoff or Backoff()
        index = 0
        last_yielded: int | None = None
        failing = False
        while True:
            started = time.monotonic()
            try:
                result = await self.query(
                    path, params=params, index=index, wait=wait, allow_404=allow_404
                )
            except (ConsulUnavailable, ConsulPermissionDenied) as exc:
                failing = True
                # Retry without blocking: Consul may have come back restored or rebuilt
                # with a lower index, and blocking on the old one would then hang for the
                # whole ``wait`` instead of showing the current state.
                index = 0
                delay = backoff.next_delay()
                if on_error is not None:
                    on_error(exc, delay)
                await anyio.sleep(delay)
                continue
            if failing:
                failing = False
                backoff.reset()
                if on_recover is not None:
                    on_recover()
                # The agent that answers now may not be the one that failed (a restart, a
                # restore): an equal index proves nothing, so hand the result on.
                last_yielded = None
            new_index = result.index
            if new_index < index:
                # Went backwards: restart the loop from 0, as Consul's docs require, or we
                # could block on an index that will not be reached for a long time.
                index = 0
                continue
            index = max(new_index, 1)
            if index != last_yielded:
                last_yielded = index
                yield QueryResult(
                    parse(result.value), index, result.known_leader, result.last_contact_ms
                )
                continue
            elapsed = time.monotonic() - started
            if elapsed < min_interval:
                await anyio.sleep(min_interval - elapsed)

    # --- status ----------------------------------------------------------------------

    async def leader(self) -> str:
        """The Raft address of the current leader, ``""`` when there is none."""
        response = await self.request("GET", "/v1/status/leader")
        value = response.json()
        return value if isinstance(value, str) else ""

    # --- agent: services and TTL checks -----------------------------------------------

    async def agent_service_register(
        self, definition: Mapping[str, Any], *, replace_existing_checks: bool = True
    ) -> None:
        """``PUT /v1/agent/service/register``: add or replace a service on this agent
        (``definition`` in Consul's JSON form: ``ID``, ``Name``, ``Address``, ``Port``,
        ``Meta``, ``Check``...). With ``replace_existing_checks`` checks missing from the
        definition are removed. Consul rejects invalid Meta with a 400 (ConsulError)."""
        await self._call(
            service_register_call(definition, replace_existing_checks=replace_existing_checks)
        )

    async def agent_service_deregister(self, service_id: str) -> None:
        """``PUT /v1/agent/service/deregister/<id>`` (Consul 1.8 answers 200 for an id it
        does not know)."""
        await self._call(service_deregister_call(service_id))

    async def agent_check_ttl(self, check_id: str, status: CheckStatus, note: str = "") -> None:
        """``PUT /v1/agent/check/<pass|warn|fail>/<check id>?note=...``: set a TTL check's
        status and output and restart its TTL. Raises :class:`ConsulNotFound` when this
        agent has no TTL check of that id (Consul 1.8 says so with a 500 or a 404)."""
        call = check_ttl_call(check_id, status, note)
        response = await self._call(call, accept=CHECK_TTL_ACCEPT)
        if response.status_code in CHECK_TTL_ACCEPT:
            body = body_excerpt(response.text)
            missing = check_ttl_missing(self.address, check_id, call, response.status_code, body)
            raise missing or self._error(call.method, call.path, response)

    async def _call(self, call: ApiCall, *, accept: Collection[int] = ()) -> httpx.Response:
        return await self.request(
            call.method, call.path, params=dict(call.params), json_body=call.body, accept=accept
        )

    # --- catalog and health ------------------------------------------------------------

    async def catalog_services(
        self, *, index: int = 0, wait: float | None = None
    ) -> QueryResult[dict[str, list[str]]]:
        """``/v1/catalog/services``: every service name with its tags (blocking)."""
        result = await self.query("/v1/catalog/services", index=index, wait=wait)
        return QueryResult(
            parse_services(result.value), result.index, result.known_leader, result.last_contact_ms
        )

    async def health_service(
        self, name: str, *, index: int = 0, wait: float | None = None, passing: bool = False
    ) -> QueryResult[list[dict[str, Any]]]:
        """``/v1/health/service/<name>``: every instance (``Node``, ``Service``,
        ``Checks``) with its checks' status; ``passing`` keeps only instances whose
        checks all pass. Blocking; the index is the service's own."""
        params: dict[str, str | int] = {"passing": ""} if passing else {}
        result = await self.query(health_service_path(name), params=params, index=index, wait=wait)
        return QueryResult(
            parse_list(result.value), result.index, result.known_leader, result.last_contact_ms
        )

    async def health_state(
        self, state: str = "any", *, index: int = 0, wait: float | None = None
    ) -> QueryResult[list[dict[str, Any]]]:
        """``/v1/health/state/<state>``: every check in that state (``any``: all), with
        its ``ServiceName``, ``Status`` and ``ModifyIndex``. Blocking."""
        result = await self.query(
            "/v1/health/state/" + quote(state, safe=""), index=index, wait=wait
        )
        return QueryResult(
            parse_list(result.value), result.index, result.known_leader, result.last_contact_ms
        )

    # --- KV --------------------------------------------------------------------------

    async def kv_get(self, key: str, *, consistency: Consistency = "default") -> KVPair | None:
        result = await self.query(_kv_path(key), consistency=consistency, allow_404=True)
        if not result.value:
            return None
        return KVPair.from_json(result.value[0])

    async def kv_list(
        self,
        prefix: str,
        *,
        index: int = 0,
        wait: float | None = None,
        consistency: Consistency = "default",
    ) -> QueryResult[tuple[KVPair, ...]]:
        """Every entry under ``prefix`` (recursively), sorted by key. Blocking with
        ``index``/``wait``."""
        result = await self.query(
            _kv_path(prefix),
            params={"recurse": ""},
            index=index,
            wait=wait,
            consistency=consistency,
            allow_404=True,
        )
        return QueryResult(
            _parse_pairs(result.value), result.index, result.known_leader, result.last_contact_ms
        )

    async def kv_keys(self, prefix: str, *, separator: str | None = None) -> list[str]:
        """The keys under ``prefix``, sorted; with ``separator``, only up to it."""
        params: dict[str, str | int] = {"keys": ""}
        if separator is not None:
            params["separator"] = separator
        result = await self.query(_kv_path(prefix), params=params, allow_404=True)
        return list(result.value or [])

    async def kv_put(
        self, key: str, value: bytes, *, cas: int | None = None, flags: int | None = None
    ) -> bool:
        """Write ``key``. With ``cas`` only if its ModifyIndex is ``cas`` (0: only if it
        does not exist); returns whether the write happened."""
        params: dict[str, str | int] = {}
        if cas is not None:
            params["cas"] = cas
        if flags is not None:
            params["flags"] = flags
        response = await self.request("PUT", _kv_path(key), params=params, content=value)
        return _bool_body(response)

    async def kv_delete(self, key: str, *, cas: int | None = None, recurse: bool = False) -> bool:
        """Delete ``key`` (or everything under it with ``recurse``). With ``cas`` only if its
        ModifyIndex is ``cas``; returns whether Consul applied it (deleting a missing key
        without ``cas`` counts as applied)."""
        params: dict[str, str | int] = {}
        if cas is not None:
            params["cas"] = cas
        if recurse:
            params["recurse"] = ""
        response = await self.request("DELETE", _kv_path(key), params=params)
        return _bool_body(response)

    def kv_watch(
        self,
        prefix: str,
        *,
        wait: float = DEFAULT_WAIT,
        on_error: OnError | None = None,
        on_recover: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
    ) -> AsyncGenerator[QueryResult[tuple[KVPair, ...]], None]:
        """:meth:`watch` over every entry under ``prefix``."""
        return self.watch(
            _kv_path(prefix),
            _parse_pairs,
            params={"recurse": ""},
            wait=wait,
            allow_404=True,
            on_error=on_error,
            on_recover=on_recover,
            backoff=backoff,
        )

    # --- transactions ----------------------------------------------------------------

    async def txn(self, ops: Sequence[KVOp]) -> TxnResult:
        """Apply ``ops`` atomically: all of them or none. A failed precondition raises
        :class:`TxnAborted` listing each failing operation; more than
        :data:`MAX_TXN_OPS` operations raise :class:`TxnTooLarge` before sending."""
        if not ops:
            return TxnResult(())
        if len(ops) > MAX_TXN_OPS:
            raise TxnTooLarge(
                f"a Consul transaction holds at most {MAX_TXN_OPS} operations, this one has "
                f"{len(ops)}: split it into several transactions (each is atomic on its own)",
                address=self.address,
                method="PUT",
                path="/v1/txn",
            )
        payload = [op.to_json() for op in ops]
        # A rolled-back transaction is a 409 with the reasons in its body.
        response = await self.request("PUT", "/v1/txn", json_body=payload, accept=(409,))
        if response.status_code == 409:
            raise self._txn_aborted(response)
        body = response.json()
        return TxnResult(
            tuple(KVPair.from_json(r["KV"]) for r in (body.get("Results") or []) if "KV" in r)
        )

    def _txn_aborted(self, response: httpx.Response) -> TxnAborted:
        text = response.text
        errors: list[TxnOpError] = []
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict):
            for err in body.get("Errors") or []:
                errors.append(TxnOpError(int(err.get("OpIndex", -1)), str(err.get("What", ""))))
        reasons = "; ".join(f"operation {e.op_index}: {e.what}" for e in errors) or text.strip()
        return TxnAborted(
            f"Consul at {self.address} rolled the transaction back: {reasons}",
            address=self.address,
            errors=errors,
            body=text[:2000],
        )


def health_service_path(name: str) -> str:
    return "/v1/health/service/" + quote(name, safe="")


def parse_services(value: Any) -> dict[str, list[str]]:
    """The body of ``/v1/catalog/services``: service name -> tags."""
    if not isinstance(value, dict):
        return {}
    return {str(k): list(v or []) for k, v in value.items()}


def parse_list(value: Any) -> list[dict[str, Any]]:
    """A JSON array of objects (``/v1/health/...``); anything else is empty."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, dict)]


def _kv_path(key: str) -> str:
    return "/v1/kv/" + quote(key, safe="/")


def _parse_pairs(value: Any) -> tuple[KVPair, ...]:
    if not value:
        return ()
    return tuple(KVPair.from_json(raw) for raw in value)


def _int_header(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        return 0


def _bool_body(response: httpx.Response) -> bool:
    return response.content.strip() == b"true"
