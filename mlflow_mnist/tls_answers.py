"""What a tracking server's failed first answer says about TLS: a certificate not trusted, a plain-HTTP server
asked for HTTPS, or an HTTPS server asked for plain HTTP. Each needs a different fix, and "cannot reach ...
start the server" fitted none of them: the server was up every time.
"""

from __future__ import annotations

import re

from mlflow_mnist.redaction import redact, shorten

# What requests/urllib3 report when the certificate was the problem (the server spoke TLS).
_CERTIFICATE = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|doesn't match|IP address mismatch")
# What OpenSSL reports when the other end answered a TLS hello in plain HTTP ("HTTP/1.0 400 ..." read as a record).
_PLAIN_ANSWER = re.compile(r"WRONG_VERSION_NUMBER|wrong version number|record layer failure|packet length too long")


def certificate_reason(text: str) -> str | None:
    """The certificate problem in a requests/urllib3 error text (buried after retry and pool messages), or None
    when the text does not say the certificate was refused."""
    if not _CERTIFICATE.search(text):
        return None
    found = re.search(
        r"certificate verify failed: ([^(')\]]+)|(IP address mismatch[^(')\]]*)|(hostname [^(')\]]+)", text
    )
    return shorten(redact(next(g for g in found.groups() if g).strip()), 100) if found else "certificate verify failed"


def answered_in_plain_http(text: str) -> bool:
    """Whether an ``https://`` request's error text says the server answered without TLS."""
    return bool(_PLAIN_ANSWER.search(text))


def speaks_tls(uri: str, *, timeout: float = 3.0) -> bool:
    """Whether the host and port of an ``http://`` URI complete a TLS handshake (certificate not checked: only
    whether the server talks TLS at all). A server that does closes a plain request without an answer, which
    reads as a connection reset, as if nothing were there."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port or 80
    except ValueError:
        return False
    if parts.scheme != "http" or not host:
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False
