"""Turning a URL and credentials into a gRPC channel, blocking or asyncio: target parsing, TLS
files, the bearer token (docs/security.md)."""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import grpc


def _target(url: str, tls_options: bool) -> tuple[str, bool]:
    """``(host:port, secure)``: https:// is TLS, http:// (or grpc://) is plain, and a bare
    ``host:port`` is TLS when TLS options are given."""
    url = url.strip()
    if url.startswith("https://"):
        return url[len("https://"):].rstrip("/"), True
    for scheme in ("http://", "grpc://"):
        if url.startswith(scheme):
            if tls_options:
                raise ValueError(f"{url} is plain http://, but TLS options are set (tls_ca, tls_cert, tls_key or "
                                 "tls_server_name); use an https:// URL")
            return url[len(scheme):].rstrip("/"), False
    if "://" in url:
        raise ValueError(f"{url}: expected a URL like http://127.0.0.1:7070 or https://ctl.example:7070")
    return url.rstrip("/"), tls_options


def split_urls(urls: Union[str, Sequence[str]]) -> list[str]:
    """The controller URLs of ``urls``: a comma-separated string or a list of URLs (blanks
    dropped); at least one."""
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    found = [url.strip() for url in parts if url.strip()]
    if not found:
        raise ValueError(f"no controller URL in {urls!r}; expected a URL like http://127.0.0.1:7070, "
                         "or several separated by commas")
    return found


def _read_pem(path: str, what: str, marker: bytes) -> bytes:
    """The file's bytes; a missing file or one without a PEM block is an error that names it."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ValueError(f"cannot read the {what} {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise ValueError(f"the {what} {path} is not PEM: it holds no -----BEGIN {marker.decode()}----- block")
    return data


def _read_token(token: Optional[str], token_file: Optional[str]) -> Optional[str]:
    if token is not None and token_file is not None:
        raise ValueError("give a token or a token file, not both")
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as error:
            raise ValueError(f"cannot read the token file {token_file}: {error.strerror}") from None
        if not token:
            raise ValueError(f"the token in {token_file} is empty")
    if token is not None and (not token or not all(33 <= ord(c) < 127 for c in token)):
        raise ValueError("the token must be non-empty visible ASCII")
    return token


@dataclass(frozen=True)
class Settings:
    """Everything a channel needs, checked once; shared by the blocking and the asyncio client."""

    target: str
    credentials: Optional[grpc.ChannelCredentials]
    options: tuple[tuple[str, Any], ...]
    token: Optional[str]

    def __repr__(self) -> str:
        token = "<redacted>" if self.token else None
        return f"Settings(target={self.target!r}, secure={self.credentials is not None}, token={token})"

    @classmethod
    def parse(cls, url: str, **options: Optional[str]) -> "Settings":
        """The settings of one controller URL; ``options`` as :meth:`parse_all`."""
        return cls.parse_all([url], **options)[0]

    @classmethod
    def parse_all(cls, urls: Union[str, Sequence[str]], *, token: Optional[str] = None,
                  token_file: Optional[str] = None, tls_ca: Optional[str] = None, tls_cert: Optional[str] = None,
                  tls_key: Optional[str] = None, tls_server_name: Optional[str] = None) -> tuple["Settings", ...]:
        """The settings of each controller of ``urls`` (a comma-separated string, or a list), in
        order, with the same token and TLS files (read once)."""
        tls_options = any(option is not None for option in (tls_ca, tls_cert, tls_key, tls_server_name))
        targets = [_target(url, tls_options) for url in split_urls(urls)]
        if (tls_cert is None) != (tls_key is None):
            given, missing = ("tls_cert", "tls_key") if tls_key is None else ("tls_key", "tls_cert")
            raise ValueError(f"{given} is set without {missing}; give both the client certificate and its key, "
                             "or neither")
        token = _read_token(token, token_file)
        credentials: Optional[grpc.ChannelCredentials] = None
        options: tuple[tuple[str, Any], ...] = ()
        if any(secure for _, secure in targets):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(tls_ca, "CA certificate", b"CERTIFICATE") if tls_ca else None,
                private_key=_read_pem(tls_key, "client key", b"PRIVATE KEY") if tls_key else None,
                certificate_chain=_read_pem(tls_cert, "client certificate", b"CERTIFICATE") if tls_cert else None,
            )
            if tls_server_name:
                options = (("grpc.ssl_target_name_override", tls_server_name),)
        return tuple(cls(target, credentials, options, token) if secure else cls(target, None, (), token)
                     for target, secure in targets)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call carries: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token is not None else ()

    def blocking_channel(self) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(self.target, self.credentials, list(self.options))
        return grpc.insecure_channel(self.target, list(self.options))

    def aio_channel(self) -> "grpc.aio.Channel":
        if self.credentials is not None:
            return grpc.aio.secure_channel(self.target, self.credentials, list(self.options))
        return grpc.aio.insecure_channel(self.target, list(self.options))


def env_options(url: Optional[str]) -> dict[str, Any]:
    """Client arguments from the environment, as the ``hangar`` CLI reads them."""
    def env(name: str) -> Optional[str]:
        return os.environ.get(name) or None

    return dict(url=url or env("HANGAR_CONTROLLER") or "http://127.0.0.1:7070", token=env("HANGAR_TOKEN"),
                token_file=env("HANGAR_TOKEN_FILE"), tls_ca=env("HANGAR_TLS_CA"), tls_cert=env("HANGAR_TLS_CERT"),
                tls_key=env("HANGAR_TLS_KEY"), tls_server_name=env("HANGAR_TLS_SERVER_NAME"))


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    pass


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer …`` to every call of a blocking channel, plain or TLS alike,
    so the raw stubs on :attr:`Client.channel` carry it too."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = list(details.metadata or [])
        if not any(key == "authorization" for key, _ in metadata):
            metadata.append(self._header)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)
