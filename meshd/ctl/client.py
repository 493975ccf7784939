"""The HTTP client of meshctl: one ``httpx.Client`` with timeouts, the bearer token, and
the translation of every failure into a :class:`CtlError` that says what to do.

Redirects are not followed (a token is never re-sent to another place). Proxy variables
(``HTTPS_PROXY``...) are honoured for remote servers and ignored for loopback ones.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from meshd.ctl.config import HOW_TO_AUTHENTICATE, Settings
from meshd.ctl.errors import CtlError, ServerError, UsageError

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
    try:
        if settings.ca_file is not None:
            return ssl.create_default_context(cafile=str(settings.ca_file))
        return ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"cannot load the CA file {settings.ca_file} (from {settings.ca_source}): {exc}",
            "Hint: --ca-file takes a PEM bundle of the CA certificate(s) that signed meshd's",
        ) from exc


class Client:
    """meshd's REST API. ``transport`` lets tests answer without sockets."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        verify: ssl.SSLContext | bool = (
            _tls_context(settings) if settings.server.startswith("https://") else True
        )
        self._http = httpx.Client(
            base_url=settings.server,
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            verify=verify,
            follow_redirects=False,
            trust_env=not settings.loopback,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    def close(self) -> None:
        self._http.close()

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
        try:
            response = self._http.request(
                method, url, params=params, json=json_body, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return self._decode(response)

    def get(self, url: str, *, params: Mapping[str, str] | None = None, auth: bool = True) -> Any:
        return self.request("GET", url, params=params, auth=auth)

    def probe(self, url: str) -> tuple[int, Any]:
        """An unauthenticated GET whose error statuses are answers, not failures
        (``/readyz`` answers 503 while meshd starts): ``(status, JSON or None)``."""
        try:
            response = self._http.get(url)
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

    def _transport_error(self, exc: httpx.HTTPError) -> CtlError:
        server = self.settings.server
        source = (
            ""
            if self.settings.server_source == "default"
            else f" (from {self.settings.server_source})"
        )
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            phase = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
            return CtlError(
                f"meshd at {server}{source} did not {phase} within {self.timeout_s:g}s",
                "Hint: is meshd running and reachable? A longer --timeout helps for large applies",
            )
        if isinstance(exc, httpx.ConnectError):
            if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason.lower():
                return CtlError(
                    f"cannot verify the TLS certificate of {server}{source}: {reason}",
                    "Hint: pass --ca-file (or MESHD_CA_FILE, or caFile in the config file) with "
                    "the CA that signed meshd's certificate",
                )
            if "WRONG_VERSION_NUMBER" in reason or "record layer failure" in reason:
                return CtlError(
                    f"cannot connect to meshd at {server}{source}: it does not speak TLS there",
                    "Hint: meshd serves plain HTTP on loopback; use http:// for it",
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
                "Hint: if meshd serves TLS there, use https://",
            )
        return CtlError(f"request to meshd at {server}{source} failed: {reason}")
