"""The sampler's decode steps each way `model.kv_cache` allows, for `python -m bench.perf`.

For each dtype (float32 and bfloat16 on a GPU, the run's dtype on a CPU) and each batch size, B
on-policy samples of arithmetic (calculator in the loop, T=1, 4 per query) in one batch, drawn from
the same generator by the dynamic cache (finished rows leave the batch), the static cache (every row
steps until the last ends) and the compiled static cache (torch.compile; CUDA graphs on a GPU). Each
cell is timed after one untimed call of the same shapes, which compiles and captures the compiled
step (its seconds are shown apart: a run pays them once per shape, not per step).
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import torch

from methods.engine.model_config import KV_CACHE_KINDS as KINDS


def _seconds(device: torch.device, fn: Callable, repeats: int):
    """(fn's last result, its fastest time in seconds over `repeats` calls), the queue drained."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return out, best


def decode_steps(traj) -> int:
    """Forward passes after the prompt: a row feeds every token it keeps but the last of a row cut
    at max_actions, and the batch steps until its last row has."""
    return max(len(t) - (not done) for t, done in zip(traj.tokens, traj.terminated))


def measure_decode(engine, examples, batches: list[int], per_query: int, seed: int, repeats: int,
                   deadline: float, kinds: list[str]) -> list[dict]:
    """One row per (B, kind) on `engine`'s policy; a cell begun after `deadline` (time.monotonic)
    is skipped. The engine's batch size and decoder are restored."""
    device, dtype = engine.policy.device, next(engine.policy.model.parameters()).dtype
    saved = engine.batch_size, engine.static_decode
    rows = []
    try:
        for batch in batches:
            engine.batch_size = batch  # one batch: the shapes a step of B trajectories has
            queries = [ex for ex in examples[: batch // per_query] for _ in range(per_query)]
            draw = lambda: engine.sample(queries, [1.0] * len(queries), torch.Generator(device=device).manual_seed(seed))
            reference = None
            for kind in kinds:
                row = {"dtype": str(dtype).removeprefix("torch."), "B": batch, "kind": kind}
                rows.append(row)
                if time.monotonic() > deadline:
                    row["skipped"] = True
                    continue
                print(f"decode {row['dtype']} B = {batch} {kind} ...", file=sys.stderr, flush=True)
                engine.set_kv_cache(kind)
                _, row["first_s"] = _seconds(device, draw, 1)
                traj, row["s"] = _seconds(device, draw, repeats)
                row["steps"], row["tokens"] = decode_steps(traj), sum(len(t) for t in traj.tokens)
                if reference is None:
                    reference = traj.tokens
                row["rows_differ"] = sum(a != b for a, b in zip(traj.tokens, reference))
    finally:
        engine.batch_size, engine.static_decode = saved
    return rows


def decode_comparison(engine, args, examples, batches: list[int], kinds: list[str], per_query: int) -> list[dict]:
    """The table's rows: `engine` for the run's dtype, on a GPU also a policy of the other dtype
    (float32 and bfloat16), within `args.decode_budget` seconds."""
    from methods.engine.engine import Engine
    from methods.engine.models import ModelConfig, load_policy

    rows, deadline = [], time.monotonic() + args.decode_budget
    for dtype in ["float32", "bfloat16"] if engine.policy.device.type == "cuda" else [args.dtype]:
        other = None if dtype == args.dtype else Engine(load_policy(ModelConfig(
            preset=args.model, dtype=dtype, device=args.device), args.seed), engine.task, engine.batch_size)
        rows += measure_decode(other or engine, examples, batches, per_query, args.seed, max(1, args.repeats),
                               deadline, kinds)
    return rows


def decode_table(rows: list[dict]) -> str:
    """The markdown section of the results file."""
    lines = ["", "## Decode steps by `model.kv_cache`", "",
             "B samples in one batch from the same generator; ms / step: the sample call's time over its decode "
             "steps (prefill included); speed-up: dynamic's time over this one's at the same dtype and B; first call: "
             "the untimed call of the same shapes (the compiled step's compile and capture). Rows differ: samples not "
             "token for token dynamic's (rounding can flip a draw in bfloat16 or on a GPU).", "",
             "| dtype | B | kv_cache | steps | ms / step | sampled tokens / s | speed-up | first call (s) | rows differ |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {(r["dtype"], r["B"]): r["s"] for r in rows if r["kind"] == "dynamic" and "s" in r}
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['dtype']} | {r['B']} | {r['kind']} | skipped: past the time budget | | | | | |")
            continue
        dynamic = base.get((r["dtype"], r["B"]))
        ratio = f"{dynamic / r['s']:.2f}×" if dynamic else "—"
        lines.append(f"| {r['dtype']} | {r['B']} | {r['kind']} | {r['steps']} | {1000 * r['s'] / r['steps']:.1f} | "
                     f"{r['tokens'] / r['s']:.0f} | {ratio} | {r['first_s']:.1f} | {r['rows_differ']} / {r['B']} |")
    fp32 = {(r["B"], r["kind"]): r["s"] for r in rows if r["dtype"] == "float32" and "s" in r}
    pairs = [(r["B"], r["kind"], fp32[(r["B"], r["kind"])] / r["s"]) for r in rows
             if r["dtype"] == "bfloat16" and "s" in r and (r["B"], r["kind"]) in fp32]
    if pairs:
        lines += ["", "bfloat16 over float32 (float32's time over bfloat16's, the samples differ): "
                  + ", ".join(f"B = {b} {kind} {ratio:.2f}×" for b, kind, ratio in pairs) + "."]
    return "\n".join(lines) + "\n"
