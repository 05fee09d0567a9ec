"""Running ``llama-server`` with the SmolLM2 model on loopback, ready when ``/health`` says so."""

from __future__ import annotations

import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from ..errors import ModelServerError
from ..processes import ManagedProcess
from .assets import MODEL_NAME, ModelAssets
from .build import LlamaServerBuild


class LlamaServer(ManagedProcess):
    """llama.cpp's OpenAI-compatible server: ``base_url`` is ``http://host:port/v1``.

    ``--parallel`` slots serve that many requests at once; the model is served under the
    name ``smollm2`` (llama-server ignores the ``model`` field of a request anyway).
    """

    name = "model server"
    start_error = ModelServerError

    def __init__(
        self,
        port: int,
        cache_dir: Path,
        host: str = "127.0.0.1",
        *,
        parallel: int = 2,
        threads: int = 2,
        context: int = 4096,
        cache_ram_mib: int | None = None,
        start_timeout: float = 60.0,
        out: IO[str] | None = None,
    ):
        super().__init__(port, host, start_timeout, flag="--port")
        self.assets = ModelAssets(cache_dir)
        self.build = LlamaServerBuild(self.assets)
        self.parallel, self.threads, self.context = parallel, threads, context
        #: llama.cpp's prompt cache in host memory (``--cache-ram``, MiB; 0: none, so the
        #: server holds only the prompts in its slots); None: the server's default
        self.cache_ram_mib = cache_ram_mib
        self.out = out or sys.stderr
        self._binary: Path | None = None
        self._model: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _prepare(self) -> None:
        self._binary = self.build.ensure(self.out)
        self._model = self.assets.ensure_model(self.out)

    def _command(self) -> list[str]:
        assert self._binary is not None and self._model is not None
        cache_ram = [] if self.cache_ram_mib is None else ["--cache-ram", str(self.cache_ram_mib)]
        return [
            str(self._binary), "-m", str(self._model), "--alias", MODEL_NAME,
            "--host", self.host, "--port", str(self.port), "-t", str(self.threads),
            "-c", str(self.context), "--parallel", str(self.parallel), "--metrics", *cache_ram,
        ]  # fmt: skip

    def _log_file(self) -> IO[bytes]:
        return tempfile.TemporaryFile(prefix="llama-server-")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False
