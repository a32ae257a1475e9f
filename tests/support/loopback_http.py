"""The part every fake HTTP server in the tests shares: an aiohttp app served on 127.0.0.1."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

HOST = "127.0.0.1"


@dataclass
class LoopbackHTTPServer:
    """Serves the routes :meth:`add_routes` adds on a loopback port, until :meth:`stop`.

    A dataclass base for dataclass fakes: its one field is keyword-only, so a subclass's own
    fields keep their places in its constructor.
    """

    _runner: web.AppRunner | None = field(default=None, kw_only=True)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Add the server's routes (each subclass has its own)."""
        raise NotImplementedError

    async def serve(self, port: int = 0) -> str:
        """Listen on ``127.0.0.1:port`` (0: a free port) and return :attr:`url`."""
        app = web.Application()
        self.add_routes(app.router)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, port).start()
        return self.url

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` while serving."""
        assert self._runner is not None, "not serving"
        return f"http://{HOST}:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        """Close the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
