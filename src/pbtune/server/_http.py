"""The client's HTTP plumbing: one request with bounded, jittered retries of transient failures."""

from __future__ import annotations

import hashlib
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

from pbtune.server.errors import ServerUnavailableError, error_from_wire

__all__ = ["RetryingTransport", "TRANSIENT_STATUS", "tls_verify"]

# 502-504: a proxy or a restarting server; 503 is also the server's "store unavailable".
TRANSIENT_STATUS = frozenset({502, 503, 504})


def tls_verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx's ``verify`` from True/False, a CA bundle file or folder, or an SSL context."""
    if isinstance(verify, str):
        import os

        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return verify


class RetryingTransport:
    """Sends requests through ``client``, retrying connection errors and 502/503/504.

    Retries back off exponentially (full jitter, capped at ``max_delay``) and stop after
    ``retry_seconds``, when :class:`ServerUnavailableError` says what failed last. Error
    answers (4xx, 500) are raised at once as the exceptions :func:`error_from_wire` maps them to.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        retry_seconds: float,
        first_delay: float = 0.05,
        max_delay: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.retry_seconds = retry_seconds
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._rng = rng or random.Random()

    def request(self, method: str, path: str, *, content_factory: Callable[[], Any] | None = None,
                **kwargs: Any) -> httpx.Response:
        """Send; ``content_factory`` makes a fresh body for each attempt (an open file, say)."""

        def attempt() -> httpx.Response:
            body = content_factory() if content_factory is not None else None
            try:
                response = self.client.request(method, path, **kwargs, **({} if body is None else {"content": body}))
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            if not response.is_success:
                raise _Answer(response)
            return response

        return self.call(attempt, f"{method} {path}")  # type: ignore[no-any-return]

    def download(self, path: str, dest: str, *, params: dict[str, Any] | None = None) -> tuple[str, int]:
        """Stream ``path`` into the file ``dest`` (rewritten on each attempt); return its SHA-256 and size."""

        def attempt() -> tuple[str, int]:
            with self.client.stream("GET", path, params=params) as response:
                if not response.is_success:
                    response.read()
                    raise _Answer(response)
                digest, size = hashlib.sha256(), 0
                with open(dest, "wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        handle.write(chunk)
                return digest.hexdigest(), size

        return self.call(attempt, f"GET {path}")

    def call(self, attempt: Callable[[], Any], what: str) -> Any:
        """Run ``attempt`` (which may raise :class:`_Answer`) with the same retry policy."""
        deadline = time.monotonic() + self.retry_seconds
        delay = self._first_delay
        attempts = 0
        while True:
            attempts += 1
            try:
                return attempt()
            except httpx.TransportError as exc:
                if _tls_failure(exc):  # a certificate problem does not heal by waiting
                    raise ServerUnavailableError(
                        f"TLS with the pbtune server at {self.client.base_url} failed: {exc} (for a self-signed"
                        " certificate pass verify='path/to/cert.pem'; for an http server use an http:// URL)"
                    ) from exc
                last = f"{type(exc).__name__}: {exc}"
            except _Answer as answer:
                response = answer.response
                if response.status_code not in TRANSIENT_STATUS:
                    raise error_from_wire(response.status_code, _body(response)) from None
                last = f"HTTP {response.status_code}: {_body(response)}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerUnavailableError(
                    f"pbtune server at {self.client.base_url} did not answer {what} within"
                    f" {self.retry_seconds:g} s ({attempts} attempts); last error: {last}"
                )
            self._sleep(min(self._rng.uniform(0, delay), remaining))
            delay = min(delay * 2, self._max_delay)


def _tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Answer(Exception):
    """An unsuccessful HTTP answer inside :meth:`RetryingTransport.call`."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]
