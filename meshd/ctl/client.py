"""The HTTP client of meshctl: one ``httpx.Client`` with timeouts, the bearer token, the
verification of meshd's certificate, and the translation of every failure into a
:class:`CtlError` that says what to do.

The connection is opened on the first request. For an ``https://`` server it verifies
against the roots :mod:`meshd.ctl.config` chose; with none (trust on first use) it first
fetches ``/v1/ca/roots`` unverified and without the token, verifies the server with
those roots, pins them and only then sends anything else (see :mod:`meshd.ctl.trust`).

Redirects are not followed (a token is never re-sent to another place). Proxy variables
(``HTTPS_PROXY``...) are honoured for remote servers and ignored for loopback ones.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote

import httpx

from meshd.ctl import trust
from meshd.ctl.config import HOW_TO_AUTHENTICATE, Settings
from meshd.ctl.errors import CtlError, ServerError, UsageError

Stage = Literal["request", "unverified", "first-use"]

DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
YAML_CONTENT_TYPE = "application/yaml"


def path(*segments: str) -> str:
    """``/v1/resources/VirtualService/default/reviews`` with each segment escaped."""
    return "/" + "/".join(quote(s, safe="") for s in segments)


def auth_hint(status: int, settings: Settings) -> str:
    if status == 401:
        origin = (
            f" The token sent came from {settings.token_source}." if settings.token_source else ""
        )
        return f"the server did not accept the token.{origin} To use another, {HOW_TO_AUTHENTICATE}"
    if status == 403:
        return (
            "the token's role does not allow this; ask an admin for a token with the role it "
            "needs (meshctl admin-token create --name NAME --role editor|admin)"
        )
    if status >= 500:
        return "this is a failure of meshd itself; its log says more"
    return ""


def _tls_context(settings: Settings) -> ssl.SSLContext:
    path = settings.ca_file
    assert path is not None
    try:
        return trust.context_from_file(path)
    except (OSError, ssl.SSLError) as exc:
        if settings.trust == "pinned":
            raise UsageError(
                f"cannot load the CA bundle pinned for {settings.server} ({path}): {exc}",
                f"Hint: re-pin it with: {trust.RE_PIN}",
            ) from exc
        raise UsageError(
            f"cannot load the CA file {path} (from {settings.ca_source}): {exc}",
            f"Hint: --ca-file takes a PEM bundle of the CA certificate(s) that signed meshd's: "
            f"<data-dir>/{trust.BUNDLE_FILE} on the meshd host",
        ) from exc


class Client:
    """meshd's REST API. ``transport`` lets tests answer without sockets; ``note`` prints
    a line to stderr (the note that a bundle was pinned)."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._transport = transport
        self._note = note or (lambda _line: None)
        self._http: httpx.Client | None = None
        self._ssl: ssl.SSLContext | None = None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def _new_http(self, verify: ssl.SSLContext | bool) -> httpx.Client:
        return httpx.Client(
            base_url=self.settings.server,
            timeout=httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s)),
            verify=verify,
            follow_redirects=False,
            trust_env=not self.settings.loopback,
            transport=self._transport,
            headers={"Accept": "application/json"},
        )

    @property
    def http(self) -> httpx.Client:
        """The connection to meshd, verified; made (and, on first use, pinned) on first use."""
        if self._http is None:
            settings = self.settings
            if not settings.https:
                self._http = self._new_http(True)
            elif settings.trust == "first-use":
                bundle = self.trust_first_use()
                assert settings.pin_file is not None
                trust.write_pin(settings.pin_file, bundle.pem)
                self._note(trust.pinned_note(settings.server, bundle, settings.pin_file))
            else:
                self._ssl = _tls_context(settings)
                self._http = self._new_http(self._ssl)
        assert self._http is not None
        return self._http

    def trust_first_use(self) -> trust.Bundle:
        """Fetch the server's trust bundle without verification (and without the token),
        then fetch it again verified with those roots; the verified answer is returned
        and every later request verifies with it. Nothing is written."""
        server = self.settings.server
        with self._new_http(False) as unverified:
            try:
                body = self._send(unverified, "GET", trust.ROOTS_PATH, stage="unverified")
            except ServerError as exc:
                raise CtlError(
                    f"cannot fetch the CA bundle of {server} to trust it on first use: "
                    f"{exc.message}",
                    f"Hint: is {server} meshd? Or pass --ca-file with its trust bundle "
                    f"(<data-dir>/{trust.BUNDLE_FILE} on the meshd host)",
                ) from exc
        offered = trust.parse_bundle(body, f"the answer of {server}{trust.ROOTS_PATH}")
        context = trust.context_from_pem(offered.pem)
        verified = self._new_http(context)
        try:
            body = self._send(verified, "GET", trust.ROOTS_PATH, stage="first-use")
            bundle = trust.parse_bundle(body, f"the answer of {server}{trust.ROOTS_PATH}")
        except BaseException:
            verified.close()
            raise
        if self._http is not None:
            self._http.close()
        self._http, self._ssl = verified, context
        return bundle

    def trust_more(self, pem: str) -> None:
        """Also trust these roots from now on (for new connections). Only for roots that
        came over a connection verified with the current ones (a root rotation followed
        by ``ca rotate --wait``); no file changes."""
        if self._ssl is not None:
            self._ssl.load_verify_locations(cadata=pem)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        auth: bool = True,
    ) -> Any:
        """The decoded JSON answer (None for an empty one); :class:`ServerError` for an
        error status, :class:`CtlError` when the server cannot be reached."""
        headers: dict[str, str] = {}
        if auth:
            headers["Authorization"] = self.settings.authorization()
        if content_type:
            headers["Content-Type"] = content_type
        return self._send(
            self.http,
            method,
            url,
            params=params,
            json_body=json_body,
            content=content,
            headers=headers,
        )

    def _send(
        self,
        http: httpx.Client,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stage: Stage = "request",
    ) -> Any:
        try:
            response = http.request(
                method, url, params=params, json=json_body, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, stage) from exc
        return self._decode(response)

    def get(self, url: str, *, params: Mapping[str, str] | None = None, auth: bool = True) -> Any:
        return self.request("GET", url, params=params, auth=auth)

    def probe(self, url: str) -> tuple[int, Any]:
        """An unauthenticated GET whose error statuses are answers, not failures
        (``/readyz`` answers 503 while meshd starts): ``(status, JSON or None)``."""
        http = self.http
        try:
            response = http.get(url)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    def _decode(self, response: httpx.Response) -> Any:
        text = response.text
        body: Any = None
        if text.strip():
            try:
                body = json.loads(text)
            except ValueError:
                body = None
        if response.status_code >= 400:
            problem = (
                body if isinstance(body, dict) and ("detail" in body or "title" in body) else None
            )
            raise ServerError(
                response.status_code,
                problem,
                raw=text if problem is None else "",
                hint=auth_hint(response.status_code, self.settings),
            )
        if 300 <= response.status_code < 400:
            where = response.headers.get("location", "")
            raise CtlError(
                f"{self.settings.server} answered with a redirect ({response.status_code}) to "
                f"{where or 'somewhere'}; meshctl does not follow redirects",
                "Hint: point --server (or MESHD_ADDR) at meshd itself",
            )
        if text.strip() and body is None:
            raise CtlError(
                f"{self.settings.server} answered {response.status_code} with something that is "
                f"not JSON: {text[:120]!r}",
                "Hint: is --server (or MESHD_ADDR) the address of meshd?",
            )
        return body

    def _transport_error(self, exc: httpx.HTTPError, stage: Stage = "request") -> CtlError:
        settings = self.settings
        server = settings.server
        source = "" if settings.server_source == "default" else f" (from {settings.server_source})"
        reason = str(exc) or type(exc).__name__
        failure = trust.verify_failure(exc) if isinstance(exc, httpx.ConnectError) else None
        if failure is not None:
            if failure.hostname:
                return trust.hostname_error(server, source, failure.reason)
            if stage == "first-use":
                return trust.first_use_error(server, failure.reason)
            if settings.trust == "pinned" and settings.ca_file is not None:
                return trust.ca_changed_error(server, settings.ca_file, failure.reason)
            return trust.untrusted_error(
                server, source, settings.ca_file, settings.trust_source, failure.reason
            )
        if isinstance(exc, httpx.TimeoutException):
            phase = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
            return CtlError(
                f"meshd at {server}{source} did not {phase} within {self.timeout_s:g}s",
                "Hint: is meshd running and reachable? A longer --timeout helps for large applies",
            )
        if isinstance(exc, httpx.ConnectError):
            if "WRONG_VERSION_NUMBER" in reason or "record layer failure" in reason:
                return CtlError(
                    f"cannot connect to meshd at {server}{source}: it does not speak TLS there",
                    "Hint: is that meshd's address? (meshd serves HTTPS only)",
                )
            if "refused" in reason.lower():
                why = "connection refused"
            elif "name" in reason.lower() and (
                "resolution" in reason.lower() or "known" in reason.lower()
            ):
                why = "the host name does not resolve"
            else:
                why = reason
            return CtlError(
                f"cannot connect to meshd at {server}{source}: {why}",
                "Hint: is meshd running? (meshd serve) Or point --server / MESHD_ADDR at it",
            )
        if isinstance(exc, httpx.RemoteProtocolError) and server.startswith("http://"):
            return CtlError(
                f"{server}{source} did not speak HTTP as expected: {reason}",
                "Hint: meshd serves HTTPS only: use https://",
            )
        return CtlError(f"request to meshd at {server}{source} failed: {reason}")
