"""TLS on migration channels: QEMU's ``tls-creds``, ``tls-hostname`` and
``tls-authz`` parameters over the objects of livemig.objects.

x509 credentials use the standard library's ``ssl``. PSK credentials use
pyOpenSSL, because Python 3.11's ``ssl`` has no PSK (it came in 3.13):
pyOpenSSL is PyCA's maintained OpenSSL binding, and the PSK callbacks of
OpenSSL (``SSL_CTX_set_psk_client_callback`` / ``..._server_callback``)
are exported by the OpenSSL binding of ``cryptography`` that pyOpenSSL is
built on. The two callbacks are registered here through that binding
(pyproject pins the versions whose internals this relies on: the
``_context`` pointer of an ``OpenSSL.SSL.Context``). PSK runs over TLS 1.2
with the ECDHE-PSK and PSK cipher suites.

A :class:`TlsSession` carries every byte of a channel once its handshake
is done: main channel, multifd channels, the return path and postcopy's
recovery channel alike. The return path reads on one thread while pages
are written on another; session tickets are off (none is sent), so after
the handshake each direction only carries the migration's own bytes.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MigrationError
from ..objects import ObjectRegistry, TlsCredsPsk, TlsCredsX509

HANDSHAKE_TIMEOUT_S = 30.0
_COALESCE = 64 << 10  # small buffers are joined into one TLS write up to this size


class TlsError(MigrationError):
    """A TLS handshake or check failed (the peer, its certificate, or its identity)."""


class TlsSession:
    """An established TLS session over a socket: gathered writes, reads into views."""

    def __init__(self, endpoint: Any, identity: str | None, pyopenssl: bool) -> None:
        self._endpoint = endpoint      # ssl.SSLSocket or OpenSSL.SSL.Connection
        self.identity = identity       # the peer's DN or PSK username, when known
        self._pyopenssl = pyopenssl

    def send(self, buffers: Sequence[bytes | memoryview]) -> int:
        total = 0
        pending = bytearray()
        for buf in buffers:
            if len(buf) < _COALESCE:
                pending += buf
                if len(pending) < _COALESCE:
                    continue
            if pending:
                total += self._write(pending)
                pending = bytearray()
            if len(buf) >= _COALESCE:
                total += self._write(buf)
        if pending:
            total += self._write(pending)
        return total

    def _write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            self._endpoint.sendall(data)
        except ssl.SSLError as err:
            raise OSError(f"TLS: {err.reason or err}") from err
        except Exception as err:
            if self._pyopenssl:
                raise _pyopenssl_io_error(err) from err
            raise
        return len(data)

    def recv_into(self, view: memoryview) -> int:
        try:
            return int(self._endpoint.recv_into(view, len(view)))
        except ssl.SSLEOFError:
            return 0
        except ssl.SSLError as err:
            raise OSError(f"TLS: {err.reason or err}") from err
        except Exception as err:
            if not self._pyopenssl:
                raise
            from OpenSSL import SSL
            if isinstance(err, SSL.ZeroReturnError | SSL.SysCallError):
                return 0  # the peer closed (with or without close_notify)
            raise _pyopenssl_io_error(err) from err


def _pyopenssl_io_error(err: Exception) -> Exception:
    from OpenSSL import SSL
    if isinstance(err, SSL.Error):
        return OSError(f"TLS: {err}")
    return err


@dataclass(frozen=True)
class TlsConfig:
    """What one side's parameters ask for: credentials, hostname, authorization."""

    creds: TlsCredsX509 | TlsCredsPsk
    hostname: str | None
    authz: Any | None   # AuthzSimple | AuthzList

    @classmethod
    def from_params(cls, params: dict[str, Any], objects: ObjectRegistry,
                    endpoint: str) -> TlsConfig | None:
        """None without tls-creds; MigrationError for a missing or wrong object."""
        ident = params.get("tls-creds") or ""
        if not ident:
            return None
        creds = objects.get(ident)
        if not isinstance(creds, TlsCredsX509 | TlsCredsPsk):
            raise MigrationError(f"No TLS credentials with id '{ident}'")
        if creds.endpoint != endpoint:
            raise MigrationError(f"Expecting TLS credentials with a {endpoint} endpoint")
        authz = None
        authz_id = params.get("tls-authz") or ""
        if authz_id and endpoint == "server":
            authz = objects.get(authz_id)
            if authz is None or not hasattr(authz, "allows"):
                raise MigrationError(f"Cannot find access control list '{authz_id}'")
        return cls(creds, params.get("tls-hostname") or None, authz)

    # --- handshakes ---------------------------------------------------------------
    def client(self, sock: socket.socket, default_host: str | None) -> tuple[Any, TlsSession]:
        """Handshake as the source. Returns the socket to keep (the TLS socket
        for x509) and the session."""
        hostname = self.hostname or default_host
        if isinstance(self.creds, TlsCredsPsk):
            return sock, self._psk(sock, server=False)
        creds = self.creds
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.options |= ssl.OP_NO_TICKET
        if creds.verify_peer:
            ctx.load_verify_locations(creds.ca_cert)
            ctx.check_hostname = hostname is not None
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if creds.cert and creds.key:
            ctx.load_cert_chain(creds.cert, creds.key)
        return self._x509(ctx, sock, server=False, hostname=hostname)

    def server(self, sock: socket.socket) -> tuple[Any, TlsSession]:
        """Handshake as the destination, then the tls-authz check."""
        if isinstance(self.creds, TlsCredsPsk):
            session = self._psk(sock, server=True)
            kept: Any = sock
        else:
            creds = self.creds
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.options |= ssl.OP_NO_TICKET
            # No TLS 1.3 tickets either: a precopy source never reads, and unread
            # bytes at its close would make TCP reset the stream's tail away.
            ctx.num_tickets = 0
            assert creds.cert is not None and creds.key is not None  # a server has both
            ctx.load_cert_chain(creds.cert, creds.key)
            if creds.verify_peer:
                ctx.load_verify_locations(creds.ca_cert)
                ctx.verify_mode = ssl.CERT_REQUIRED
            kept, session = self._x509(ctx, sock, server=True, hostname=None)
        if self.authz is not None:
            who = session.identity
            if who is None or not self.authz.allows(who):
                raise TlsError(f"TLS authz check for '{who}' is denied")
        return kept, session

    @staticmethod
    def _x509(ctx: ssl.SSLContext, sock: socket.socket, server: bool,
              hostname: str | None) -> tuple[ssl.SSLSocket, TlsSession]:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls = ctx.wrap_socket(sock, server_side=server, server_hostname=hostname)
        except (ssl.SSLError, ssl.CertificateError) as err:
            raise TlsError(f"TLS handshake failed: {getattr(err, 'verify_message', None) or err}"
                           ) from err
        except OSError as err:
            raise TlsError(f"TLS handshake failed: {err.strerror or err}") from err
        tls.settimeout(None)
        identity = None
        der = tls.getpeercert(binary_form=True)
        if der:
            from cryptography import x509
            # QEMU (GnuTLS) names the subject in certificate order, C=…,O=…,CN=…;
            # RFC 4514's string is the reverse. tls-authz identities are
            # written the way QEMU prints them, so match QEMU.
            subject = x509.load_der_x509_certificate(der).subject
            identity = ",".join(rdn.rfc4514_string() for rdn in subject.rdns)
        return tls, TlsSession(tls, identity, pyopenssl=False)

    def _psk(self, sock: socket.socket, server: bool) -> TlsSession:
        from OpenSSL import SSL

        creds = self.creds
        assert isinstance(creds, TlsCredsPsk)
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(b"ECDHE-PSK:PSK")
        seen: dict[str, str] = {}
        keepalive = _install_psk_callback(ctx, creds, server, seen)
        conn = SSL.Connection(ctx, sock)
        if server:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
        # pyOpenSSL wants a blocking socket: the handshake's time limit is the
        # kernel's (SO_RCVTIMEO / SO_SNDTIMEO), lifted once it is done.
        _kernel_timeouts(sock, HANDSHAKE_TIMEOUT_S)
        try:
            conn.do_handshake()
        except SSL.Error as err:
            raise TlsError(f"TLS handshake failed: {_openssl_reason(err)}") from err
        except OSError as err:
            raise TlsError(f"TLS handshake failed: {err.strerror or err}") from err
        _kernel_timeouts(sock, 0)
        session = TlsSession(conn, seen.get("identity") if server else creds.username,
                             pyopenssl=True)
        session._callbacks = keepalive  # type: ignore[attr-defined]  # alive as long as conn
        return session


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO and SO_SNDTIMEO (struct timeval, <linux/time.h>); 0: none."""
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _openssl_reason(err: Exception) -> str:
    args = getattr(err, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        return "; ".join(str(item[-1]) for item in args[0])
    return str(err) or type(err).__name__


def _install_psk_callback(ctx: Any, creds: TlsCredsPsk, server: bool,
                          seen: dict[str, str]) -> Any:
    """Register OpenSSL's PSK callback on a pyOpenSSL context (see the module
    docstring for the route); returns the cffi callback, which must stay alive."""
    from OpenSSL.SSL import _ffi, _lib  # cryptography's OpenSSL binding, via pyOpenSSL

    if server:
        def serve(_ssl: Any, identity: Any, psk: Any, max_len: int) -> int:
            try:
                # Safe: OpenSSL passes a NUL-terminated identity (or NULL).
                name = _ffi.string(identity).decode() if identity != _ffi.NULL else ""
                key = creds.keys.get(name)
                if key is None or len(key) > max_len:
                    return 0  # unknown user: the handshake fails
                seen["identity"] = name
                # Safe: OpenSSL's buffer holds max_len bytes; len(key) <= max_len.
                _ffi.memmove(psk, key, len(key))
                return len(key)
            except Exception:
                return 0
        callback = _ffi.callback(
            "unsigned int(*)(SSL *, const char *, unsigned char *, unsigned int)", serve)
        _lib.SSL_CTX_set_psk_server_callback(ctx._context, callback)
        return callback

    def connect(_ssl: Any, _hint: Any, identity: Any, max_identity: int, psk: Any,
                max_len: int) -> int:
        try:
            name = creds.username.encode()
            key = creds.keys[creds.username]
            if len(name) + 1 > max_identity or len(key) > max_len:
                return 0
            # Safe: both buffers are OpenSSL's, of the sizes it gave, checked above.
            _ffi.memmove(identity, name + b"\0", len(name) + 1)
            _ffi.memmove(psk, key, len(key))
            return len(key)
        except Exception:
            return 0
    callback = _ffi.callback("unsigned int(*)(SSL *, const char *, char *, unsigned int, "
                             "unsigned char *, unsigned int)", connect)
    _lib.SSL_CTX_set_psk_client_callback(ctx._context, callback)
    return callback


def connect_tls(sock: socket.socket, config: TlsConfig | None,
                default_host: str | None) -> tuple[socket.socket, TlsSession | None]:
    """The source's side of a new channel (no TLS: as it is)."""
    if config is None:
        return sock, None
    try:
        return config.client(sock, default_host)
    except BaseException:
        sock.close()
        raise


def accept_tls(sock: socket.socket,
               config: TlsConfig | None) -> tuple[socket.socket, TlsSession | None]:
    """The destination's side of a new channel."""
    if config is None:
        return sock, None
    try:
        return config.server(sock)
    except BaseException:
        sock.close()
        raise
