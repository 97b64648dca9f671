"""`ConsoleServer`: the web console of a running control plane, on its own HTTP(S) port."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import tempfile
import threading
from pathlib import Path

from meshbreaker.control.auth import TokenAuthenticator
from meshbreaker.control.console.api import ConsoleApi
from meshbreaker.control.console.history import CallHistory
from meshbreaker.control.console.http import ConsoleHttpServer
from meshbreaker.control.servicer import ControlPlaneServicer


def tls_context(cert: bytes, key: bytes, client_ca: bytes | None) -> ssl.SSLContext:
    """The console's TLS: the control plane's certificate; its client CA, if any, required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads a chain only from files: the PEM goes to a private temporary directory.
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(cert_path, key_path)
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        context.verify_mode = ssl.CERT_REQUIRED  # the same clients as the gRPC port
    return context


class ConsoleServer:
    """Serves the console of `servicer` on http(s)://host:port/ from a thread; start on the loop.

    The page's reads and writes go through the servicer's own handlers and the same token
    check as the gRPC API; `history_step` is how often the call history is sampled, `refresh`
    how often an open page gets the mesh when no event came.
    """

    def __init__(
        self,
        servicer: ControlPlaneServicer,
        authenticator: TokenAuthenticator,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        refresh: float = 2.0,
        history_step: float = 2.0,
    ) -> None:
        self._servicer = servicer
        self._authenticator = authenticator
        self._address = (host, port)
        self._tls = tls
        self._refresh = refresh
        self._history = CallHistory(step=history_step)
        self._http: ConsoleHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        if self._http is None:
            raise RuntimeError("the console is not started")
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        """The address to open in a browser."""
        host = self._address[0]
        if ":" in host:
            host = f"[{host}]"
        elif host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}/"

    def start(self) -> None:
        """Bind (OSError if the port is taken) and serve; call it on the control plane's loop."""
        loop = asyncio.get_running_loop()
        api = ConsoleApi(self._servicer, self._authenticator, self._history)
        self._http = ConsoleHttpServer(
            self._address,
            api=api,
            bus=self._servicer.events,
            loop=loop,
            tls=self._tls,
            open_access=not self._authenticator.enabled,
            refresh=self._refresh,
            boot=secrets.token_hex(8),
        )
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="meshbreaker-console",
            daemon=True,
        )
        self._thread.start()
        self._sampler = loop.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self._history.sample(self._servicer.mesh_view().instances)
            await asyncio.sleep(self._history.step)

    async def stop(self) -> None:
        """Close the port and every open page's feed; call it on the control plane's loop."""
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        http, self._http = self._http, None
        if http is not None:
            http.closing.set()
            # Its shutdown waits for the serving thread: off the loop, which open feeds may need.
            await asyncio.get_running_loop().run_in_executor(None, self._close, http)

    def _close(self, http: ConsoleHttpServer) -> None:
        http.shutdown()
        http.server_close()
        if self._thread is not None:
            self._thread.join()
        # Feeds notice `closing` within a quarter second; none may outlive the loop it reads.
        http.wait_for_streams(timeout=5.0)
