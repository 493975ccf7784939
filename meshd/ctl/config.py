"""Where meshctl finds its server, token and CA: flag > environment > config file > default.

The config file (``--config`` / ``MESHD_CONFIG``, default
``$XDG_CONFIG_HOME/meshd/config.yaml``, i.e. ``~/.config/meshd/config.yaml``) is a YAML
mapping with the keys ``server``, ``token`` and ``caFile``. Without a token from any of
these, and only for a server on loopback, ``admin.token`` in ``--data-dir`` /
``MESHD_DATA_DIR`` is used (meshd writes its first admin token there).

meshd serves HTTPS with a certificate from its own CA; which roots verify it is decided
here too (``Settings.trust``), in the order :mod:`meshd.ctl.trust` describes: CA file,
the data dir's ``ca-bundle.pem``, the bundle pinned for the server, trust on first use.

A bearer token never crosses a non-loopback link in cleartext: :func:`check_cleartext`
refuses to send one to a plain ``http://`` server that is not on loopback.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from meshd.ctl.errors import UsageError, yaml_problem
from meshd.ctl.trust import BUNDLE_FILE, TrustKind, config_home, pin_path
from meshd.netaddr import is_loopback_host, is_loopback_url

DEFAULT_SERVER = "https://127.0.0.1:15012"
CONFIG_KEYS = ("server", "token", "caFile")
ENV_SERVER = "MESHD_ADDR"
ENV_TOKEN = "MESHD_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_CA_FILE = "MESHD_CA_FILE"
ENV_CONFIG = "MESHD_CONFIG"
ENV_DATA_DIR = "MESHD_DATA_DIR"
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name

HOW_TO_AUTHENTICATE = (
    "pass --token TOKEN, set MESHD_TOKEN, or put 'token: TOKEN' in the config file "
    "(~/.config/meshd/config.yaml). On the meshd host, --data-dir DIR (or MESHD_DATA_DIR) "
    "reads the first admin token from DIR/admin.token"
)


@dataclass(frozen=True, slots=True)
class Flags:
    """The global options as given on the command line (None: not given)."""

    server: str | None = None
    token: str | None = None
    ca_file: str | None = None
    config: str | None = None
    data_dir: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved connection settings; ``*_source`` say where each value came from, so errors
    can tell the user which setting to change."""

    server: str
    server_source: str
    token: str | None = None
    token_source: str = ""
    ca_file: Path | None = None
    """The roots that verify the server (a CA file, the data dir's bundle or the pin);
    None for trust on first use and for plain http."""
    ca_source: str = ""
    trust: TrustKind = "none"
    pin_file: Path | None = None
    """Where this server's bundle is (or would be) pinned; None for plain http."""
    warnings: tuple[str, ...] = ()

    @property
    def loopback(self) -> bool:
        return is_loopback_url(self.server)

    @property
    def https(self) -> bool:
        return self.server.startswith("https://")

    @property
    def trust_source(self) -> str:
        """`` (from --ca-file)``, `` (pinned)``...: where the roots came from, for errors."""
        if self.trust == "pinned":
            return " (pinned)"
        if self.trust == "first-use":
            return " (trusted on first use)"
        return f" (from {self.ca_source})" if self.ca_source else ""

    def authorization(self) -> str:
        """The ``Authorization`` header value; raises if there is no token or it would go
        out in cleartext."""
        if self.token is None:
            raise UsageError(
                f"no token to authenticate to {self.server}", f"Hint: {HOW_TO_AUTHENTICATE}"
            )
        check_cleartext(self.server, self.token_source)
        return f"Bearer {self.token}"


def default_config_path(env: Mapping[str, str]) -> Path:
    return config_home(env) / "config.yaml"


def check_server_url(url: str, source: str) -> str:
    """``url`` without a trailing slash; a usage error naming ``source`` if it is not an
    ``http(s)://host[:port][/prefix]`` URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"the server address {url!r} (from {source}) is not a URL",
            f"Hint: meshd serves HTTPS: use https://HOST:PORT, e.g. {DEFAULT_SERVER}",
        )
    try:
        _ = parts.port
    except ValueError as exc:
        raise UsageError(
            f"the server address {url!r} (from {source}) has a bad port: {exc}"
        ) from exc
    if parts.query or parts.fragment:
        raise UsageError(
            f"the server address {url!r} (from {source}) must not have ?query or #fragment"
        )
    return url.strip().rstrip("/")


def check_cleartext(server: str, token_source: str = "") -> None:
    """Refuse to send a bearer token over plain HTTP to anything but loopback."""
    parts = urlsplit(server)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        origin = f" (from {token_source})" if token_source else ""
        raise UsageError(
            f"refusing to send the token{origin} to {server} over plain http: it would cross "
            "the network in cleartext",
            f"Hint: use https://{parts.netloc}{parts.path}: meshd serves HTTPS, with a "
            "certificate meshctl verifies against the mesh's CA",
        )


def load_config_file(path: Path, *, explicit: bool, source: str) -> dict[str, str]:
    """The config file's settings; {} when the default file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"config file {path} (from {source}) does not exist") from None
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {yaml_problem(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"config file {path} must be a mapping with the keys {', '.join(CONFIG_KEYS)}; "
            f"it holds a {type(data).__name__}"
        )
    unknown = sorted(str(k) for k in data if k not in CONFIG_KEYS)
    if unknown:
        raise UsageError(
            f"config file {path} has unknown key(s) {', '.join(unknown)}; "
            f"the keys are {', '.join(CONFIG_KEYS)}"
        )
    out: dict[str, str] = {}
    for key, value in data.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise UsageError(
                f"config file {path}: {key} must be a string, not {type(value).__name__}"
            )
        out[str(key)] = value
    return out


def _world_readable(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def read_token_file(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def resolve(
    flags: Flags,
    env: Mapping[str, str],
    *,
    read_token: Callable[[Path], str | None] = read_token_file,
) -> Settings:
    """Apply flag > environment > config file > default to every setting."""
    warnings: list[str] = []
    if flags.config:
        config_path, config_source, explicit = Path(flags.config), "--config", True
    elif env.get(ENV_CONFIG):
        config_path, config_source, explicit = Path(env[ENV_CONFIG]), ENV_CONFIG, True
    else:
        config_path, config_source, explicit = default_config_path(env), "default", False
    config = load_config_file(config_path.expanduser(), explicit=explicit, source=config_source)
    in_config = f"{config_path} ({{}})"

    def pick(flag: str | None, env_name: str, key: str) -> tuple[str | None, str]:
        if flag:
            return flag, f"--{'ca-file' if key == 'caFile' else key}"
        if env.get(env_name):
            return env[env_name], env_name
        if config.get(key):
            return config[key], in_config.format(key)
        return None, ""

    server, server_source = pick(flags.server, ENV_SERVER, "server")
    if server is None:
        server, server_source = DEFAULT_SERVER, "default"
    server = check_server_url(server, server_source)

    token, token_source = pick(flags.token, ENV_TOKEN, "token")
    token = token.strip() if token else None
    if token and token_source.startswith(str(config_path)) and _world_readable(config_path):
        warnings.append(
            f"warning: {config_path} holds a token and is readable by other users; "
            f"chmod 600 {config_path}"
        )
    if not token and is_loopback_url(server):
        data_dir = flags.data_dir or env.get(ENV_DATA_DIR)
        if data_dir:
            path = Path(data_dir).expanduser() / ADMIN_TOKEN_FILE
            token = read_token(path)
            token_source = str(path) if token else ""

    ca_text, ca_source = pick(flags.ca_file, ENV_CA_FILE, "caFile")
    ca_file: Path | None = None
    if ca_text:
        ca_file = Path(ca_text).expanduser()
        if ca_source.startswith(str(config_path)) and not ca_file.is_absolute():
            ca_file = config_path.expanduser().parent / ca_file
        if not os.access(ca_file, os.R_OK):
            raise UsageError(f"the CA file {ca_file} (from {ca_source}) cannot be read")
        if not server.startswith("https://"):
            warnings.append(f"warning: the CA file ({ca_source}) is unused: {server} is not https")

    trust: TrustKind = "none"
    pin: Path | None = None
    if server.startswith("https://"):
        pin = pin_path(env, server)
        trust, ca_file, ca_source = _trust(flags, env, ca_file, ca_source, pin)
    return Settings(
        server=server,
        server_source=server_source,
        token=token or None,
        token_source=token_source if token else "",
        ca_file=ca_file,
        ca_source=ca_source,
        trust=trust,
        pin_file=pin,
        warnings=tuple(warnings),
    )


def _trust(
    flags: Flags, env: Mapping[str, str], ca_file: Path | None, ca_source: str, pin: Path
) -> tuple[TrustKind, Path | None, str]:
    """CA file > the data dir's bundle (if it exists) > the pin (if it exists) > first use."""
    if ca_file is not None:
        return "ca-file", ca_file, ca_source
    if flags.data_dir:
        data_dir, source = flags.data_dir, "--data-dir"
    else:
        data_dir, source = env.get(ENV_DATA_DIR) or "", ENV_DATA_DIR
    if data_dir:
        bundle = Path(data_dir).expanduser() / BUNDLE_FILE
        if bundle.is_file():
            return "data-dir", bundle, source
    if pin.is_file():
        return "pinned", pin, "the pinned bundle"
    return "first-use", None, ""
