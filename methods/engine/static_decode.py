"""The sampler's decode steps on a preallocated KV cache, so that a GPU can replay them as one graph.

Why it exists: with the dynamic cache (`rollout.sample`'s default) every step has new shapes, the
cache one column longer and finished rows gone from the batch, so every kernel of every step is
launched from Python; on an H200, SmolLM2-135M spends ~21 ms per step whatever the batch, almost
all of it launching. Here the cache is allocated once for the whole batch and every step has the
same shapes (one token for every row, a finished row on padding; the same cache length; mask and
positions as tensors), so `torch.compile(mode="reduce-overhead")` captures a step as a CUDA graph
and replays it (an earlier experiment of a static cache under torch.compile: 6.5-7.1 ms per step;
this module's own: `python -m bench.perf` on a GPU).

What it does not change: `rollout.sample` still decides each row's next token on the host (a drawn
action, a pending tool token) and draws from the live rows' distributions exactly as on the dynamic
path, so with the same generator both sample the same tokens, up to rounding that may flip a draw
(in fp32 on a CPU none does: tests/test_static_decode.py). A tool's
answer goes in as forced inputs of the next steps, never by re-running a prefix, so the captured
graph holds. The prompt runs once as on the dynamic path (shapes vary there, it is not compiled) and
its cache, the shared few-shot prefix included, is copied into the static one.

Forward tokens: a step runs every row of the batch, so every row counts at every step until the
last row finishes, a finished row's padding included: the device computes those positions. The step
calls the model under the PEFT wrapper (LoRA layers are in it, so adapters apply) and reports its
tokens through `count`: traced, the engine's counting hook on the wrapper would make its running
total a constant of the graph, and every step a recompile.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

COLUMNS = 128
"""Cache lengths are rounded up to a multiple of this: each distinct (rows, length) is one more CUDA
graph to capture and one more cache to keep (the step is compiled once for all shapes)."""

KEPT_CACHES = 2
"""Static caches kept between calls (a CUDA graph replays on the same memory; a cache of SmolLM2 at
512 rows and 512 columns is 6 GB in bf16)."""


def room(width: int, rules) -> int:
    """Cache columns to allocate for a prompt `width` tokens wide: the most actions and as many tool
    tokens again (arithmetic's calculator answers a few tokens per 8-odd actions). A row that needs
    more grows the cache (a copy, and one more graph to capture)."""
    return width + 2 * rules.max_actions


def _columns(n: int) -> int:
    return -(-n // COLUMNS) * COLUMNS


def decode_step(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
    """Last-position logits [B, V] after feeding one token per row: the function that is compiled."""
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits[:, -1]


@functools.cache
def compiled_step(backend: str, mode: str | None):
    """`decode_step` through torch.compile, one wrapper per process and settings: a decoder made
    later (a new Engine, `set_kv_cache`) reuses what an earlier one compiled.

    dynamic=True: one compilation serves every batch size and cache length (a run has several:
    training chunks, evaluation chunks), each shape then captured as its own CUDA graph."""
    return torch.compile(decode_step, backend=backend, mode=mode, dynamic=True)


class StaticDecoder:
    """Preallocated caches, kept per shape between calls, and the (maybe compiled) decode step.

    `count` is told the token positions of every step (the engine's forward-token count).
    `compiled`: run the step through `torch.compile` (on CUDA with mode="reduce-overhead": CUDA
    graphs); `backend` is torch.compile's (the tests trace with "eager")."""

    def __init__(self, count: Callable[[int], None], compiled: bool = False, backend: str = "inductor"):
        self.count, self.compiled, self.backend = count, compiled, backend
        self.caches: dict[tuple, object] = {}  # (rows, columns, dtype, device) -> StaticCache
        self.grown = 0  # caches grown because a row outran its room

    def step_function(self, device: torch.device):
        if not self.compiled:
            return decode_step
        # CUDA graphs need CUDA; the CPU gets Inductor's kernels alone. Only Inductor takes a mode.
        return compiled_step(self.backend, "reduce-overhead" if device.type == "cuda" and self.backend == "inductor"
                             else None)

    def cache(self, model, rows: int, columns: int, like: torch.Tensor):
        from transformers import StaticCache

        key = (rows, columns, like.dtype, like.device)
        if key not in self.caches:
            if len(self.caches) >= KEPT_CACHES:
                self.caches.pop(next(iter(self.caches)))
            self.caches[key] = StaticCache(config=model.config, max_cache_len=columns)
        return self.caches[key]

    def start(self, model, cache, mask: torch.Tensor, last_pos: torch.Tensor, rules, pad_id: int) -> "StaticRun":
        """A run whose first step follows the prompt in `cache` (a DynamicCache [B, H, W, D] per
        layer), `mask` [B, W] its attention mask and `last_pos` [B] each row's last position."""
        width = mask.shape[1]
        static = self._filled(model, cache, _columns(room(width, rules)), width)
        full = torch.ones((mask.shape[0], static.get_max_length()), dtype=mask.dtype, device=mask.device)
        full[:, :width] = mask  # the columns to come are causally masked until written
        return StaticRun(self, model, static, full, last_pos.unsqueeze(-1).clone(), width, pad_id)

    def _filled(self, model, source, columns: int, width: int):
        """A static cache of `columns` holding the first `width` columns of `source` (a dynamic or
        static cache), its write position after them."""
        keys = source.layers[0].keys
        static = self.cache(model, keys.shape[0], columns, keys)
        for into, layer in zip(static.layers, source.layers):
            if not into.is_initialized:
                into.lazy_initialization(layer.keys, layer.values)
            into.keys[:, :, :width].copy_(layer.keys[:, :, :width])
            into.values[:, :, :width].copy_(layer.values[:, :, :width])
            into.cumulative_length.fill_(width)  # in place: the graph reads it at a fixed address
        return static

    def grow(self, run: "StaticRun") -> None:
        """Copy a full run's cache into one twice as long."""
        self.grown += 1
        old = run.cache.get_max_length()
        run.cache = self._filled(run.model, run.cache, _columns(2 * old), old)
        extra = torch.ones((run.mask.shape[0], run.cache.get_max_length() - old), dtype=run.mask.dtype,
                           device=run.mask.device)
        run.mask = torch.cat([run.mask, extra], 1)


class StaticRun:
    """One batch's decode steps on a static cache: `advance` is `rollout.sample`'s step."""

    def __init__(self, decoder: StaticDecoder, model, cache, mask: torch.Tensor, positions: torch.Tensor,
                 written: int, pad_id: int):
        self.decoder, self.model, self.cache, self.mask, self.positions = decoder, model, cache, mask, positions
        self.written, self.pad_id = written, pad_id
        self.inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # see the module's doc
        self.rows = list(range(mask.shape[0]))  # batch rows still sampling, in `rollout.sample`'s live order
        self.index = torch.arange(mask.shape[0], device=mask.device)
        self.step = decoder.step_function(mask.device)

    def advance(self, tokens: list[int], keep: list[int]) -> torch.Tensor:
        """Feed `tokens` to the live rows `keep` (indices into the live rows; the others have
        finished) and padding to every other row; the logits [len(keep), V] of the kept rows."""
        if len(keep) < len(self.rows):
            self.rows = [self.rows[j] for j in keep]
            self.index = torch.tensor(self.rows, device=self.mask.device)
        if self.written == self.cache.get_max_length():
            self.decoder.grow(self)
        ids = [self.pad_id] * self.mask.shape[0]
        for row, token in zip(self.rows, tokens):
            ids[row] = token
        self.positions = self.positions + 1
        if self.decoder.compiled and self.mask.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are read: the graph may reuse them
        logits = self.step(self.inner, torch.tensor(ids, device=self.mask.device).unsqueeze(-1), self.mask,
                           self.positions, self.cache)
        self.decoder.count(len(ids))
        self.written += 1
        return logits[self.index]
