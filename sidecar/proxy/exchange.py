"""Relaying one HTTP/1.1 request and its response between a downstream connection and an
upstream one, bodies streaming both ways, with retries, timeouts and local replies.

Per request (both listeners; the outbound one adds routing, the inbound one authz)::

    Downstream.next_request()            the head (and whatever of the body came with it)
      -> a Plan: method, target, upstream fields, where attempts go, retry rule, timeout
      -> forward(): attempt 1..n
           acquire an upstream connection (pooled, or new: TCP [+ mTLS + check_peer])
           send head + body, read the response head     <- per-try timeout
           retriable outcome and budget allows it?  back off, try another endpoint
         relay the response: head, then Data... EndOfMessage as they arrive
      -> release the upstream connection to its pool, or close it
    all of it under the route timeout (504 before the response starts; after, the
    downstream connection is aborted so the client sees the truncation)

Bodies are never buffered whole. A request body that arrived complete with its head
(the usual small request), or that is read to completion within ``BODY_BUFFER_LIMIT``
(64 KiB, Envoy's default buffer limit) when the route retries, is sent with the head and
can be replayed on a retry. Any other body streams from the client to the upstream in a
second task while the response is read (the upstream may answer before the body ends);
such a request is retried only when no connection could be made (nothing was sent).
``Expect: 100-continue`` is answered here, once an upstream connection is ready, and not
forwarded (Envoy's default).

Nothing here logs per request; telemetry gets one record per request
(:mod:`sidecar.proxy.report`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from random import Random

import trio

from sidecar.lb import Load
from sidecar.protocol import (
    DONE,
    IDLE,
    SEND_BODY,
    SEND_RESPONSE,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Limits,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    ServerConnection,
)
from sidecar.protocol.events import END_OF_MESSAGE
from sidecar.protocol.headers import Field
from sidecar.proxy.config import NO_BYTES_EDITS, BytesEdits
from sidecar.proxy.forwarding import response_fields
from sidecar.proxy.report import MTLS, PLAINTEXT, RequestFacts, TelemetrySink
from sidecar.proxy.streams import RECV_SIZE, TcpStream, TlsStream
from sidecar.proxy.tunnel import relay
from sidecar.proxy.upstream import ConnectFailure, Pools, Upstream
from sidecar.routing import Failure, RetryBudget, RetryRule, RetryStatus, backoff_ms, decide_retry
from sidecar.telemetry import UNKNOWN_WORKLOAD, Workload

__all__ = [
    "BODY_BUFFER_LIMIT",
    "Downstream",
    "Plan",
    "ProxyContext",
    "Target",
    "forward",
    "local_reply",
]

BODY_BUFFER_LIMIT = 64 * 1024
DISCARD_LIMIT = 256 * 1024
DISCARD_TIMEOUT_S = 1.0
LINGER_S = 1.0

TEXT_PLAIN = (b"content-type", b"text/plain")
CLOSE = (b"connection", b"close")

BODY_NO_HEALTHY_UPSTREAM = b"no healthy upstream"
BODY_TIMEOUT = b"upstream request timeout"
BODY_CONNECT = b"upstream connect error or disconnect/reset before headers. reset reason: "


class ProxyContext:
    """What every handler of one proxy shares: the upstream pools, telemetry, the rng
    (balancers, retry back-off) and whether the proxy is draining."""

    __slots__ = ("downstreams", "draining", "limits", "pools", "rng", "telemetry")

    def __init__(
        self,
        pools: Pools,
        telemetry: TelemetrySink | None = None,
        *,
        rng: Random | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.pools = pools
        self.telemetry = telemetry or TelemetrySink()
        self.rng = rng or Random()  # noqa: S311 — load balancing and jitter, not secrets
        self.limits = limits or Limits()
        self.draining = False
        # Client connections being served: the idle sweeper and a drain close the ones
        # waiting for a request.
        self.downstreams: set[Downstream] = set()


class Downstream:
    """One client connection: its stream, HTTP/1.1 server state, parsed events not yet
    handled, and who the peer is. ``idle_since`` is the monotonic time since which it
    waits for a request (0 while a request is in hand): the idle sweeper closes it
    after the idle timeout, and a drain at once."""

    __slots__ = (
        "conn",
        "events",
        "idle_since",
        "local_port",
        "peer_id",
        "peer_ip",
        "peer_port",
        "received",
        "secure",
        "stream",
    )

    def __init__(
        self,
        stream: TcpStream | TlsStream,
        peer_ip: str,
        peer_port: int,
        local_port: int,
        *,
        limits: Limits,
        secure: bool = False,
        peer_id: str | None = None,
    ) -> None:
        self.stream = stream
        self.conn = ServerConnection(limits)
        self.events: deque[Event] = deque()
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.local_port = local_port
        self.secure = secure
        self.peer_id = peer_id
        self.idle_since = 0.0
        self.received = 0

    @property
    def closed(self) -> bool:
        return self.stream.closed

    async def read(self) -> bool:
        """One read from the client into :attr:`events`; False at the end of stream.
        Raises RemoteProtocolError (bad bytes) and trio's stream errors."""
        data = await self.stream.receive_some(RECV_SIZE)
        self.received += len(data)
        self.events.extend(self.conn.receive_data(data))
        return bool(data)

    async def next_request(self) -> Request | None:
        """The next request head; None when the client closed (or the connection was
        closed under us: idle, drain). Raises RemoteProtocolError."""
        events = self.events
        self.received = 0
        try:
            while True:
                while events:
                    event = events.popleft()
                    if type(event) is Request:
                        return event
                    if type(event) is ConnectionClosed:
                        return None
                if self.conn.eof_received:
                    return None
                self.idle_since = time.monotonic()
                if not await self.read() and not events:
                    return None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        finally:
            self.idle_since = 0.0

    def take_body(self) -> tuple[list[bytes], EndOfMessage | None]:
        """The body pieces already parsed (consumed), and the end of the body if it
        is among them."""
        chunks: list[bytes] = []
        events = self.events
        while events:
            event = events[0]
            kind = type(event)
            if kind is Data:
                chunks.append(event.data)  # type: ignore[union-attr]
                events.popleft()
            elif kind is EndOfMessage:
                events.popleft()
                return chunks, event  # type: ignore[return-value]
            else:
                break
        return chunks, None

    async def body_event(self) -> Data | EndOfMessage:
        """The next piece of the request body (reading as needed). Raises
        RemoteProtocolError: a bad chunk, or the client closed mid-body."""
        events = self.events
        while not events:
            await self.read()
        event = events.popleft()
        assert type(event) is Data or type(event) is EndOfMessage
        return event

    async def send(self, data: bytes) -> None:
        # A client that stops reading is caught by the stream's stall timer.
        await self.stream.send_all(data)

    async def discard_body(self) -> bool:
        """Read and drop the rest of the request body, within limits; True when it
        ended (the connection may then carry another request)."""
        conn = self.conn
        if conn.their_state is not SEND_BODY:
            return True
        if conn.expects_continue:
            return False  # the client waits: it may never send the body
        dropped = 0
        with trio.move_on_after(DISCARD_TIMEOUT_S):
            try:
                while dropped <= DISCARD_LIMIT:
                    chunks, end = self.take_body()
                    dropped += sum(len(c) for c in chunks)
                    if end is not None:
                        return True
                    await self.read()
            except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return False

    async def linger_close(self) -> None:
        """Close after a last response while the client may still be sending: shut our
        side, read and drop for a moment, then close, so the kernel does not answer
        unread data with a reset that destroys the response before the client reads it."""
        stream = self.stream
        try:
            await stream.send_eof()
            with trio.move_on_after(LINGER_S):
                drained = 0
                while drained < DISCARD_LIMIT:
                    data = await stream.receive_some(RECV_SIZE)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        stream.close()


# --- local replies --------------------------------------------------------------------------


async def local_reply(
    ds: Downstream,
    status: int,
    body: bytes = b"",
    *,
    extra: tuple[Field, ...] = (),
    close: bool = False,
    draining: bool = False,
) -> int:
    """Answer the current request from the proxy (404, 503, a redirect...). The rest of
    the request body is dropped first when that is quick, else the connection closes
    after the answer. Returns the bytes sent (0 when the client is gone)."""
    conn = ds.conn
    if conn.our_state is not SEND_RESPONSE:
        return 0
    if not close and conn.their_state is SEND_BODY:
        close = not await ds.discard_body()
    fields: list[Field] = [TEXT_PLAIN, (b"content-length", b"%d" % len(body)), *extra]
    if close or draining:
        fields.append(CLOSE)
    try:
        out = conn.send(Response(status, Headers.trusted(fields)))
        if body:
            out += conn.send(Data(body))
        out += conn.send(END_OF_MESSAGE)
        await ds.send(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
        ds.stream.close()
        return 0
    if close:
        await ds.linger_close()
    return len(out)


async def protocol_error_reply(ds: Downstream, exc: ProtocolError) -> int:
    """400 (or 413/414/431/501/505) for bytes that are not an acceptable request, then
    close: nothing after bad bytes is ever read as a request."""
    data = ds.conn.send_error(exc)
    if data:
        try:
            await ds.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            ds.stream.close()
            return 0
    await ds.linger_close()
    return len(data)


# --- planning ----------------------------------------------------------------------------------


class Target:
    """Where one attempt goes: ``host:port``, plaintext or mesh mTLS expecting one of
    ``expected``. ``load`` is the endpoint's in-flight count (least-request balancing);
    ``peer`` its telemetry labels; ``key`` what retries avoid; ``extra`` response fields
    this choice adds (a consistent-hash cookie to set)."""

    __slots__ = (
        "connect_timeout_s",
        "expected",
        "extra",
        "host",
        "key",
        "load",
        "peer",
        "port",
        "secure",
    )

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secure: bool = False,
        expected: frozenset[str] = frozenset(),
        connect_timeout_s: float = 10.0,
        load: Load | None = None,
        peer: Workload = UNKNOWN_WORKLOAD,
        key: object = None,
        extra: tuple[Field, ...] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.secure = secure
        self.expected = expected
        self.connect_timeout_s = connect_timeout_s
        self.load = load
        self.peer = peer
        self.key = key if key is not None else (host, port)
        self.extra = extra


Chooser = Callable[[list[object]], "Target | None"]
"""``choose(tried)``: the target of the next attempt, avoiding the keys in ``tried``;
None when there is no endpoint at all."""


class Plan:
    """How to forward one request (built by the listener that took it)."""

    __slots__ = (
        "budget",
        "choose",
        "extra",
        "method",
        "request",
        "response_edits",
        "rule",
        "timeout_s",
        "upgrade",
        "upstream_is_peer",
    )

    def __init__(
        self,
        request: Request,
        choose: Chooser,
        *,
        rule: RetryRule | None = None,
        budget: RetryBudget | None = None,
        timeout_s: float | None = None,
        response_edits: BytesEdits = NO_BYTES_EDITS,
        extra: tuple[Field, ...] = (),
        upgrade: bool = False,
        upstream_is_peer: bool = True,
    ) -> None:
        self.request = request
        self.method = request.method
        self.choose = choose
        self.rule = rule
        self.budget = budget
        self.timeout_s = timeout_s
        self.response_edits = response_edits
        self.extra = extra
        self.upgrade = upgrade
        # Telemetry's peer: the upstream on the outbound side; on the inbound side it
        # is the client (the upstream is our own app).
        self.upstream_is_peer = upstream_is_peer


# --- forwarding ----------------------------------------------------------------------------------


class _Closed(Exception):
    """The upstream closed the connection before a response head."""


class _Gone(Exception):
    """The exchange broke after the response began; ``flag`` says who left (Envoy's
    response flags: ``DC`` the client, ``UC`` the upstream, ``UPE`` an upstream that
    stopped speaking HTTP)."""

    def __init__(self, flag: str) -> None:
        super().__init__(flag)
        self.flag = flag


class _Result:
    """What one attempt came to (see :func:`_attempt`)."""

    __slots__ = ("events", "failure", "head", "reason", "up")

    def __init__(
        self,
        failure: Failure | None = None,
        reason: str = "",
        up: Upstream | None = None,
        head: Response | InformationalResponse | None = None,
        events: list[Event] | None = None,
    ) -> None:
        self.failure = failure
        self.reason = reason
        self.up = up
        self.head = head
        self.events = events or []


_ANSWERED = _Result()  # the attempt answered the client itself (a streamed request)


async def forward(ctx: ProxyContext, ds: Downstream, plan: Plan, facts: RequestFacts) -> None:
    """Forward the current request of ``ds`` per ``plan`` and relay the response, or
    answer locally (503, 504, 502) when no upstream answers. Never raises for the
    client's or the upstream's failures; ``facts`` records what happened."""
    conn = ds.conn
    chunks, end = ds.take_body()
    if end is None and plan.rule is not None and not conn.expects_continue:
        # The route retries: read a small body to its end so it can be sent again.
        size = sum(len(c) for c in chunks)
        try:
            while end is None and size <= BODY_BUFFER_LIMIT:
                await ds.read()
                more, end = ds.take_body()
                chunks += more
                size += sum(len(c) for c in more)
        except RemoteProtocolError as exc:
            facts.status = exc.status_hint
            facts.flag("DPE")
            facts.sent += await protocol_error_reply(ds, exc)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            facts.flag("DC")
            ds.stream.close()
            return
    prefix = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    replayable = end is not None and len(prefix) <= BODY_BUFFER_LIMIT
    budget = plan.budget
    if budget is not None:
        budget.begin_request()
    started = [False]  # whether the response to the client has begun
    try:
        if plan.timeout_s is None:
            await _attempts(ctx, ds, plan, facts, prefix, end, replayable, started)
            return
        with trio.move_on_after(plan.timeout_s) as scope:
            await _attempts(ctx, ds, plan, facts, prefix, end, replayable, started)
    finally:
        if budget is not None:
            budget.end_request()
    if scope.cancelled_caught:
        facts.flag("UT")
        if not started[0]:
            facts.status = 504
            facts.details = "upstream_response_timeout"
            facts.sent += await local_reply(ds, 504, BODY_TIMEOUT, draining=ctx.draining)
        else:
            ds.stream.abort()  # the response began: the client must see it cut short


async def _attempts(
    ctx: ProxyContext,
    ds: Downstream,
    plan: Plan,
    facts: RequestFacts,
    prefix: bytes,
    end: EndOfMessage | None,
    replayable: bool,
    started: list[bool],
) -> None:
    rule = plan.rule
    budget = plan.budget
    per_try = rule.per_try_timeout_ms / 1000.0 if rule and rule.per_try_timeout_ms else None
    tried: list[object] = []
    retries = 0
    holding_retry = False  # a retry slot of the budget, released when that attempt ends
    try:
        while True:
            target = plan.choose(tried)
            if target is not None and target.extra:
                plan.extra = target.extra
            if target is None:
                facts.status = 503
                facts.flag("UH")
                facts.details = "no_healthy_upstream"
                facts.sent += await local_reply(
                    ds, 503, BODY_NO_HEALTHY_UPSTREAM, draining=ctx.draining
                )
                return
            tried.append(target.key)
            facts.attempts += 1
            facts.upstream_host = f"{target.host}:{target.port}"
            if plan.upstream_is_peer:
                facts.peer = target.peer
                facts.policy = MTLS if target.secure else PLAINTEXT
            load = target.load
            if load is not None:
                load.active += 1
            try:
                try:
                    result = await _attempt(
                        ctx, ds, plan, facts, target, prefix, end, per_try, started
                    )
                finally:
                    # The retry this attempt was is over: its budget slot goes back
                    # before the next decision takes one.
                    if holding_retry:
                        holding_retry = False
                        if budget is not None:
                            budget.end_retry()
                if result is _ANSWERED:
                    return
                head = result.head
                verdict = RetryStatus.NO
                if head is not None:
                    up = result.up
                    assert up is not None
                    status = head.status
                    if (
                        rule is not None
                        and replayable
                        and status in rule.statuses
                        and type(head) is Response
                    ):
                        verdict = decide_retry(rule, status, retries, budget)
                    if verdict is not RetryStatus.YES:
                        if verdict is not RetryStatus.NO:
                            facts.flag("URX")
                        await _relay(ctx, ds, up, head, result.events, plan, facts, started)
                        return
                    _discard(ctx, up, result.events)
            finally:
                if load is not None:
                    load.active -= 1
            if head is None:
                failure = result.failure
                # A streamed body is resent only when no connection was made (nothing
                # of it left); a protocol error from the upstream is never retried.
                if (
                    failure is not None
                    and rule is not None
                    and (replayable or failure is Failure.CONNECT_FAILURE)
                ):
                    verdict = decide_retry(rule, failure, retries, budget)
                if verdict is not RetryStatus.YES:
                    if verdict is not RetryStatus.NO:
                        facts.flag("URX")
                    await _fail(ctx, ds, facts, failure, result.reason)
                    return
            holding_retry = True
            retries += 1
            await trio.sleep(backoff_ms(retries - 1, ctx.rng) / 1000.0)
    finally:
        if holding_retry and budget is not None:
            budget.end_retry()


def _discard(ctx: ProxyContext, up: Upstream, events: list[Event]) -> None:
    """A response that is retried instead: keep its connection when the body was
    complete in what was read, else close it."""
    if events and type(events[-1]) is EndOfMessage and up.conn.their_state is DONE:
        ctx.pools.release(up)
    else:
        up.close()


async def _fail(
    ctx: ProxyContext, ds: Downstream, facts: RequestFacts, failure: Failure | None, reason: str
) -> None:
    """The local answer when the last attempt failed without a response to relay."""
    why = reason.encode("latin-1", "replace")
    if failure is Failure.TIMEOUT:
        status, body, flag = 504, BODY_TIMEOUT, "UT"
    elif failure is Failure.CONNECT_FAILURE:
        status, body, flag = 503, BODY_CONNECT + why, "UF"
    elif failure is None:  # the upstream's answer was not HTTP
        status, body, flag = 502, b"upstream protocol error: " + why, "UPE"
    else:
        status, body, flag = 503, BODY_CONNECT + why, "UC"
    facts.status = status
    facts.flag(flag)
    facts.details = reason
    facts.sent += await local_reply(ds, status, body, draining=ctx.draining)


async def _attempt(
    ctx: ProxyContext,
    ds: Downstream,
    plan: Plan,
    facts: RequestFacts,
    target: Target,
    prefix: bytes,
    end: EndOfMessage | None,
    per_try: float | None,
    started: list[bool],
) -> _Result:
    """One attempt: connect (or reuse), send, read the response head, all within the
    per-try timeout. A request whose body is still arriving is streamed and answered
    here (:data:`_ANSWERED`)."""
    t0 = time.perf_counter()
    if per_try is None or end is None:
        # A streamed upload is bounded by the route timeout only: the per-try timeout
        # (a wait for the response head, to try elsewhere) does not apply to a request
        # that cannot be tried elsewhere.
        result = await _try(ctx, ds, plan, facts, target, prefix, end, started)
    else:
        with trio.move_on_after(per_try) as try_scope:
            result = await _try(ctx, ds, plan, facts, target, prefix, end, started)
        if try_scope.cancelled_caught:
            return _Result(Failure.TIMEOUT, "per-try timeout")
    if result.head is not None:
        facts.upstream_time = (time.perf_counter() - t0) * 1000.0
    return result


async def _try(
    ctx: ProxyContext,
    ds: Downstream,
    plan: Plan,
    facts: RequestFacts,
    target: Target,
    prefix: bytes,
    end: EndOfMessage | None,
    started: list[bool],
) -> _Result:
    try:
        up = await ctx.pools.acquire(
            target.host,
            target.port,
            secure=target.secure,
            expected=target.expected,
            connect_timeout_s=target.connect_timeout_s,
        )
    except ConnectFailure as exc:
        return _Result(Failure.CONNECT_FAILURE, exc.reason)
    if end is None:
        return await _streaming(ctx, ds, plan, facts, up, prefix, started)
    conn = up.conn
    try:
        out = conn.send(plan.request)
        if prefix:
            out += conn.send(Data(prefix))
        out += conn.send(end)
        await up.stream.send_all(out)
        head, events = await _read_head(up)
    except RemoteProtocolError as exc:
        up.close()
        return _Result(None, exc.reason)
    except (trio.BrokenResourceError, trio.ClosedResourceError, _Closed):
        up.close()
        failure = Failure.REFUSED_STREAM if up.reused else Failure.RESET
        return _Result(failure, "connection termination")
    except BaseException:  # the per-try or route timeout, or a stop
        up.close()
        raise
    return _Result(None, "", up, head, events)


async def _read_head(up: Upstream) -> tuple[Response | InformationalResponse, list[Event]]:
    """Read until the final response head, or a 101 (which only answers an Upgrade
    request: the parser refuses any other); other 1xx are dropped, the proxy answered
    ``Expect`` itself. Raises RemoteProtocolError, :class:`_Closed` and stream errors."""
    conn = up.conn
    stream = up.stream
    while True:
        data = await stream.receive_some(RECV_SIZE)
        events = conn.receive_data(data)
        for i, event in enumerate(events):
            kind = type(event)
            if kind is Response:
                return event, events[i + 1 :]  # type: ignore[return-value]
            if kind is InformationalResponse and event.status == 101:  # type: ignore[union-attr]
                return event, []  # type: ignore[return-value]
            if kind is ConnectionClosed:
                raise _Closed
        if not data:
            raise _Closed


async def _relay(
    ctx: ProxyContext,
    ds: Downstream,
    up: Upstream,
    head: Response | InformationalResponse,
    events: list[Event],
    plan: Plan,
    facts: RequestFacts,
    started: list[bool],
) -> None:
    """Send the response to the client as it arrives; then pool the upstream connection
    (when the exchange left it reusable) or close it."""
    conn = ds.conn
    try:
        if type(head) is InformationalResponse:
            await _switch(ds, up, head, plan, facts, started)
            return
        extra = (*plan.extra, CLOSE) if ctx.draining else plan.extra
        fields = response_fields(head.headers, plan.response_edits, extra=extra)
        status = head.status
        try:
            first = conn.send(Response(status, Headers.trusted(fields), head.reason))
        except ProtocolError:  # an odd reason phrase: the standard one will do
            first = conn.send(Response(status, Headers.trusted(fields)))
        started[0] = True
        facts.status = status
        out = [first]
        ended = False
        while True:
            for event in events:
                kind = type(event)
                if kind is Data:
                    out.append(conn.send(event))
                elif kind is EndOfMessage:
                    out.append(conn.send(event))
                    ended = True
            if out:
                data = out[0] if len(out) == 1 else b"".join(out)
                out = []
                try:
                    await ds.send(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _Gone("DC") from None
                facts.sent += len(data)
            if ended:
                break
            try:
                chunk = await up.stream.receive_some(RECV_SIZE)
                events = up.conn.receive_data(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Gone("UC") from None
            except RemoteProtocolError:
                raise _Gone("UPE") from None
    except _Gone as gone:
        facts.flag(gone.flag)
        up.close()
        if gone.flag == "DC":
            ds.stream.close()
        else:
            ds.stream.abort()  # the client must see the response cut short
        return
    except ProtocolError:  # the response cannot be framed for this client
        facts.flag("UPE")
        up.close()
        ds.stream.abort()
        return
    except BaseException:
        up.close()
        raise
    up_conn = up.conn
    if up_conn.our_state is DONE and up_conn.their_state is DONE:
        ctx.pools.release(up)
    else:
        up.close()


async def _switch(
    ds: Downstream,
    up: Upstream,
    head: InformationalResponse,
    plan: Plan,
    facts: RequestFacts,
    started: list[bool],
) -> None:
    """The upstream accepted an Upgrade (101): pass the 101 on, then tunnel bytes both
    ways, starting with what each side sent after its head."""
    fields = response_fields(head.headers, plan.response_edits, upgrade=True)
    try:
        out = ds.conn.send(InformationalResponse(101, Headers.trusted(fields)))
    except ProtocolError:  # e.g. the client's request was not an Upgrade after all
        up.close()
        ds.stream.abort()
        facts.flag("UPE")
        return
    started[0] = True
    facts.status = 101
    try:
        await ds.send(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        up.close()
        ds.stream.close()
        facts.flag("DC")
        return
    facts.sent += len(out)
    _, received = await relay(
        ds.stream, up.stream, a_first=ds.conn.trailing_data, b_first=up.conn.trailing_data
    )
    facts.sent += received


class _Pump:
    """The state of a request body streamed to the upstream by a second task."""

    __slots__ = ("done", "error", "gone", "up_broken")

    def __init__(self) -> None:
        self.done = False
        self.error: ProtocolError | None = None
        self.gone = False
        self.up_broken = False


async def _streaming(
    ctx: ProxyContext,
    ds: Downstream,
    plan: Plan,
    facts: RequestFacts,
    up: Upstream,
    prefix: bytes,
    started: list[bool],
) -> _Result:
    """A request whose body is still arriving: send the head (and what came of the
    body), say ``100 Continue`` if the client waits for it, then stream the body in a
    second task while the response is read and relayed. Only a failure before the
    head went out can be retried (the caller knows: a connect failure)."""
    up_conn = up.conn
    try:
        out = up_conn.send(plan.request)
        if prefix:
            out += up_conn.send(Data(prefix))
        await up.stream.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        up.close()
        return _Result(Failure.RESET, "connection termination")
    except BaseException:
        up.close()
        raise
    conn = ds.conn
    pump = _Pump()
    try:
        if conn.expects_continue:
            try:
                await ds.send(conn.send(InformationalResponse(100)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                facts.flag("DC")
                up.close()
                ds.stream.close()
                return _ANSWERED
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump_body, ds, up, pump, nursery.cancel_scope)
            try:
                head, events = await _read_head(up)
            except RemoteProtocolError as exc:
                nursery.cancel_scope.cancel()
                up.close()
                if not pump.gone and pump.error is None:
                    await _fail(ctx, ds, facts, None, exc.reason)
                return _ANSWERED
            except (trio.BrokenResourceError, trio.ClosedResourceError, _Closed):
                nursery.cancel_scope.cancel()
                up.close()
                if not pump.gone and pump.error is None:
                    await _fail(ctx, ds, facts, Failure.RESET, "connection termination")
                return _ANSWERED
            await _relay(ctx, ds, up, head, events, plan, facts, started)
            nursery.cancel_scope.cancel()  # the response is complete: stop reading the body
    except BaseException:
        up.close()
        raise
    if not pump.done:
        up.close()
    if pump.error is not None:
        facts.flag("DPE")
        if not started[0]:
            facts.status = pump.error.status_hint
            facts.sent += await protocol_error_reply(ds, pump.error)
        else:
            ds.stream.abort()
    elif pump.gone:
        facts.flag("DC")
        ds.stream.close()
    return _ANSWERED


async def _pump_body(ds: Downstream, up: Upstream, pump: _Pump, scope: trio.CancelScope) -> None:
    """Copy the rest of the request body to the upstream. A client that breaks the
    protocol or leaves ends the exchange; an upstream that stops reading does not (its
    answer may be on the way: a 413, say)."""
    up_conn = up.conn
    while True:
        try:
            event = await ds.body_event()
        except ProtocolError as exc:
            pump.error = exc
            scope.cancel()
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pump.gone = True
            scope.cancel()
            return
        try:
            await up.stream.send_all(up_conn.send(event))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pump.up_broken = True
            return
        if type(event) is EndOfMessage:
            pump.done = True
            return


# --- the request loop of one connection -------------------------------------------------------

Handler = Callable[[Downstream, Request], "Awaitable[None]"]


async def serve_http(ctx: ProxyContext, ds: Downstream, handle: Handler) -> None:
    """Serve requests on ``ds`` one at a time, in order (pipelined ones wait their
    turn), until the client closes, a request ends the connection, or the proxy
    drains. Bad bytes get their 4xx/5xx and the connection is closed."""
    conn = ds.conn
    ctx.downstreams.add(ds)
    try:
        while True:
            try:
                request = await ds.next_request()
            except ProtocolError as exc:
                await protocol_error_reply(ds, exc)
                return
            if request is None:
                return
            await handle(ds, request)
            if ds.closed:
                return
            if conn.our_state is not DONE or conn.their_state is not DONE:
                if conn.their_state is SEND_BODY or conn.their_state is IDLE:
                    await ds.linger_close()
                return
            if ctx.draining:
                return
            try:
                ds.events.extend(conn.start_next_cycle())
            except ProtocolError as exc:
                await protocol_error_reply(ds, exc)
                return
    finally:
        ctx.downstreams.discard(ds)
        ds.stream.close()
