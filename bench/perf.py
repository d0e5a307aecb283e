"""`python -m bench.perf`: a GFlowNet step, part by part, beside the paper's algorithm.

In one process on the current device, with the offline SmolLM2-135M (`--model` for another
preset), arithmetic with its calculator and the project's own prompts and token rules. For B
trajectories (4 per query, sampled on-policy at T=1 from the untrained policy, so rollouts of 5 to
40 actions) it times each part of a SubTB step:

| part | this project | the paper's algorithm |
|---|---|---|
| sample | `Engine.sample`: KV cache, tool in the loop, finished rows leave the batch | HF `generate` of as many tokens as the longest row, no tool and no token rules (a lower bound on the reference, which also dropped the whole batch's cache at every tool call) |
| per-prefix reward | `Engine.log_reward`: every state's log R in one pass per chunk of rows of similar length | one forward pass per state k over reward prompt + s_k + Y, the 3-shot prefix's cache computed once |
| score + backward | teacher-forced log-probs, SubTB loss, backward | the same |
| optimizer | AdamW over the LoRA parameters and the flow head | the same |

It checks that both rewards agree, prints the ratios and writes results/perf/<device>.md with
the commit, device and library versions; then the sampler's decode steps each way `model.kv_cache`
allows (bench/perf_decode.py). Speed is shown here, never asserted in the test suite.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from bench import tracking
from bench.paper_reference import hf_generate, paper_per_token_rewards
from bench.perf_decode import KINDS, decode_comparison, decode_table

REPO = Path(__file__).resolve().parents[1]
SAMPLES_PER_QUERY = 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


REPEATS = 1
"""Each part runs this many times (`--repeats`) and its fastest time counts: a busy machine only
ever makes a run slower."""


def timed(device: torch.device, fn: Callable, *args, **kwargs):
    """(fn's last result, its fastest time in seconds over REPEATS calls), the device's queue drained
    on both sides of each call."""
    best = float("inf")
    for _ in range(REPEATS):
        _sync(device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return out, best


def padding_share(lengths: list[int], chunks: list[list[int]]) -> float:
    """Share of the tokens of padded chunks that are padding."""
    padded = sum(len(chunk) * max(lengths[i] for i in chunk) for chunk in chunks)
    return 1.0 - sum(lengths) / padded


def measure(engine, examples, batch: int, seed: int, reference: bool) -> dict[str, float]:
    """Seconds per part of one SubTB step on `batch` trajectories (and the paper's way)."""
    from methods.engine.rollout import shared_prefix
    from methods.gfn_tb import subtb_loss

    device, policy = engine.policy.device, engine.policy
    queries = [ex for ex in examples[: batch // SAMPLES_PER_QUERY] for _ in range(SAMPLES_PER_QUERY)]
    flow_head = torch.nn.Linear(policy.hidden_size, 1).to(device)
    params = policy.trainable_parameters() + list(flow_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    # A fresh generator per call: every repeat samples the same trajectories.
    draw = lambda: engine.sample(queries, [1.0] * len(queries), torch.Generator(device=device).manual_seed(seed))
    if engine.static_decode is not None and engine.static_decode.compiled:
        draw()  # captures this batch's shapes: once per run, not per step
    traj, t_sample = timed(device, draw)
    log_r, t_reward = timed(device, engine.log_reward, traj, queries, per_prefix=True)
    lengths = engine.reward_lengths(traj, queries, per_prefix=True)
    chunks, _ = engine.length_chunks(lengths)

    def score_and_backward():
        scores = engine.score(traj, hidden=True)
        log_flow = flow_head(scores.state_hidden.detach().float()).squeeze(-1)
        width = scores.state_mask.shape[1]
        loss = subtb_loss(scores.action_logp, scores.term_logp, log_r[:, :width].to(device), scores.state_mask, 1.0,
                          log_flow)
        loss.backward()

    def optimizer_step():
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as in training

    _, t_score = timed(device, score_and_backward)
    _, t_optimizer = timed(device, optimizer_step)
    # Tokens each way must run through the model (the shared few-shot prefix left out of both): the
    # paper's loop runs reward prompt + s_k + Y for every state k, the one pass each row once plus
    # a copy of Y per state. Their ratio bounds the reward's speed-up when compute is all that counts.
    prompts = [engine.reward_prompt_ids(ex) for ex in queries]
    shared = len(shared_prefix(prompts))
    paper_tokens = sum(len(prompts[b]) - shared + end + len(engine.observation_ids(queries[b]))
                       for b, ends in enumerate(traj.state_ends()) for end in ends)
    row = {"actions_mean": sum(traj.n_actions) / len(traj), "actions_max": max(traj.n_actions),
           "token_bound": paper_tokens / sum(lengths),
           "sample": t_sample, "reward": t_reward, "score": t_score, "optimizer": t_optimizer,
           "padding": padding_share(lengths, chunks), "padding_one_batch": padding_share(lengths, [list(range(len(lengths)))]),
           "chunks": len(chunks)}
    if reference:
        slow, row["paper_reward"] = timed(device, paper_per_token_rewards, engine, traj, queries)
        exists = torch.zeros_like(slow, dtype=torch.bool)
        for b, ends in enumerate(traj.state_ends()):
            exists[b, :len(ends)] = True
        row["reward_max_diff"] = float((log_r.cpu()[:, :slow.shape[1]] - slow).abs()[exists].max())
        _, row["paper_sample"] = timed(device, hf_generate, engine, queries, max(len(t) for t in traj.tokens), seed)
    return row


def cpu_layouts(args, task, examples) -> list[dict]:
    """This project's step at 16 trajectories per (dtype, torch threads) on the CPU."""
    import os

    from methods.engine.engine import Engine
    from methods.engine.models import ModelConfig, load_policy

    out, reference = [], None
    for dtype in ("float32", "bfloat16"):
        policy = load_policy(ModelConfig(preset=args.model, dtype=dtype, device="cpu"), args.seed)
        engine = Engine(policy, task, batch_size=64)
        for threads in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(threads)
            print(f"layout {dtype}, {threads} threads ...", file=sys.stderr, flush=True)
            row = measure(engine, examples, 16, args.seed, reference=False) | {"dtype": dtype, "threads": threads}
            out.append(row)
        # The numeric cost of bfloat16: its rewards beside float32's on float32's last trajectories.
        if dtype == "float32":
            queries = [ex for ex in examples[:4] for _ in range(SAMPLES_PER_QUERY)]
            reference = (engine.sample(queries, [1.0] * 16, torch.Generator().manual_seed(args.seed)), queries)
            reference += (engine.log_reward(reference[0], queries, per_prefix=True).float(),)
        else:
            traj, queries, fp32 = reference
            bf16 = engine.log_reward(traj, queries, per_prefix=True).float()
            exists = torch.zeros_like(fp32, dtype=torch.bool)
            for b, ends in enumerate(traj.state_ends()):
                exists[b, :len(ends)] = True
            for row in out[-(os.cpu_count() or 1):]:
                row["reward_vs_fp32"] = float((bf16 - fp32).abs()[exists].max())
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def commit() -> str:
    sha, dirty = tracking.git_sha()
    return sha + (" (with uncommitted changes)" if dirty else "")


def report(rows: dict[int, dict[str, float]], header: str) -> str:
    lines = [header, "",
             "| B | actions (mean / max) | part | this project (s) | paper's algorithm (s) | speed-up |",
             "|---|---|---|---|---|---|"]
    for batch, r in rows.items():
        shape = f"{r['actions_mean']:.1f} / {r['actions_max']}"
        ours = r["sample"] + r["reward"] + r["score"] + r["optimizer"]
        parts = [("sample (paper: HF generate)", r["sample"], r.get("paper_sample")),
                 ("per-prefix reward", r["reward"], r.get("paper_reward")),
                 ("score + backward", r["score"], r["score"]),
                 ("optimizer", r["optimizer"], r["optimizer"])]
        paper = (sum(p for _, _, p in parts) if "paper_reward" in r else None)
        parts.append(("**whole step**", ours, paper))
        for name, t, p in parts:
            ratio = f"{p / t:.2f}×" if p is not None else "—"
            lines.append(f"| {batch} | {shape} | {name} | {t:.2f} | {'—' if p is None else f'{p:.2f}'} | {ratio} |")
        lines.append(f"| {batch} | | trajectories / s | {batch / ours:.2f} | "
                     f"{'—' if paper is None else f'{batch / paper:.2f}'} | |")
    lines += ["", "Per-prefix reward pass (this project):", ""]
    for batch, r in rows.items():
        check = (f"; max |log R - paper's log R| over all states = {r['reward_max_diff']:.1e}"
                 if "reward_max_diff" in r else "")
        lines.append(f"- B = {batch}: {r['chunks']} chunks, {100 * r['padding']:.0f} % of the tokens are padding "
                     f"({100 * r['padding_one_batch']:.0f} % in one padded batch); the paper's loop runs "
                     f"{r['token_bound']:.2f}× as many tokens (the speed-up compute alone would give){check}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated trajectory counts, multiples of 4 (default: 16,64 on a CPU, "
                             "16,64,256,512 on a GPU)")
    parser.add_argument("--model", default="smollm2-135m", help="built-in model preset (default smollm2-135m)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (0: torch's default)")
    parser.add_argument("--no-reference", action="store_true", help="time only this project's parts")
    parser.add_argument("--data-dir", default=None, help="folder of the paper's data (default: generated questions)")
    parser.add_argument("--out", default=None, help="report file (default results/perf/<cpu|gpu name>.md)")
    parser.add_argument("--layouts", action="store_true",
                        help="on a CPU, also time this project's step at 16 trajectories for every torch thread "
                             "count up to the cores, in float32 and bfloat16")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per part, the fastest counting (the layouts table runs each part once)")
    parser.add_argument("--kv-cache", default="auto", choices=["auto", *KINDS],
                        help="model.kv_cache of the part-by-part table (auto: as model.kv_cache=auto, dynamic for now)")
    parser.add_argument("--decode", default=",".join(KINDS),
                        help=f"kv_cache ways the decode table compares, comma-separated (default {','.join(KINDS)}; "
                             "none: no table)")
    parser.add_argument("--decode-budget", type=float, default=240.0,
                        help="seconds for the decode table; its cells begun later are skipped (default 240)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kinds = [k for k in args.decode.split(",") if k and k != "none"]
    if any(k not in KINDS for k in kinds):
        print(f"bench.perf: --decode {args.decode!r}: give some of {', '.join(KINDS)}, or none", file=sys.stderr)
        return 2

    from methods.engine.engine import Engine
    from methods.engine.models import ModelConfig, ModelError, load_policy
    from tasks import task_class

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        policy = load_policy(ModelConfig(preset=args.model, dtype=args.dtype, device=args.device,
                                         kv_cache=args.kv_cache), args.seed)
    except ModelError as err:
        print(f"bench.perf: {err}", file=sys.stderr)
        return 2
    device = policy.device
    sizes = args.batch_sizes or ("16,64,256,512" if device.type == "cuda" else "16,64")
    try:
        batches = [int(b) for b in sizes.split(",")]
    except ValueError:
        batches = []
    if not batches or any(b < SAMPLES_PER_QUERY or b % SAMPLES_PER_QUERY for b in batches):
        print(f"bench.perf: --batch-sizes {sizes!r}: give multiples of {SAMPLES_PER_QUERY}, e.g. 16,64", file=sys.stderr)
        return 2
    task_cls = task_class("arithmetic")
    task = task_cls(task_cls.Config(), args.data_dir)
    engine = Engine(policy, task, batch_size=64)
    examples = task.train_examples()
    # Warm-up: first calls allocate and pick kernels.
    warm = examples[:2]
    traj = engine.sample(warm, [1.0, 1.0], torch.Generator(device=device).manual_seed(args.seed))
    engine.log_reward(traj, warm, per_prefix=True)

    global REPEATS
    REPEATS = max(1, args.repeats)
    rows = {}
    for batch in batches:
        print(f"B = {batch} ...", file=sys.stderr, flush=True)
        rows[batch] = measure(engine, examples, batch, args.seed, reference=not args.no_reference)
        r = rows[batch]
        print(f"B = {batch}: sample {r['sample']:.2f} s, reward {r['reward']:.2f} s, score+backward {r['score']:.2f} s, "
              f"optimizer {r['optimizer']:.2f} s" + (f"; paper: reward {r['paper_reward']:.2f} s "
              f"({r['paper_reward'] / r['reward']:.2f}×), generate {r['paper_sample']:.2f} s "
              f"({r['paper_sample'] / r['sample']:.2f}×), max reward diff {r['reward_max_diff']:.1e}"
              if "paper_reward" in r else ""), file=sys.stderr, flush=True)

    decode_rows = decode_comparison(engine, args, examples, batches, kinds, SAMPLES_PER_QUERY) if kinds else []

    layouts = []
    if args.layouts and device.type == "cpu":
        REPEATS = 1
        layouts = cpu_layouts(args, task, examples)

    import transformers

    name = device_name(device)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    command = " ".join(["python -m bench.perf", *argv])
    header = (f"# GFlowNet step, part by part: {name}\n\n`{command}`\n\n"
              f"- device: {name}" + (f", {threads} torch threads" if threads else "") + "\n"
              f"- model: {policy.provenance.get('model', args.model)}, {args.dtype}, kv_cache "
              f"{policy.provenance['kv_cache']}; arithmetic, {SAMPLES_PER_QUERY} "
              "trajectories per query, on-policy at T=1, SubTB loss\n"
              f"- torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}\n"
              f"- commit {commit()}\n"
              f"- measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; each cell the fastest of "
              f"{max(1, args.repeats)} run(s)\n\n"
              "Speed-up: the paper's time over this project's (above 1: this project is faster). Score + backward "
              "and the optimizer are the same work both ways.")
    text = report(rows, header)
    if layouts:
        text += ("\nCPU layouts: this project's step at 16 trajectories (fresh samples per cell, so lengths differ a "
                 "little; bfloat16's rewards against float32's on the same trajectories in the last column).\n\n"
                 "| dtype | torch threads | actions (mean) | sample (s) | reward (s) | score + backward (s) | step (s) | "
                 "trajectories / s | max abs Δ log R vs float32 |\n|---|---|---|---|---|---|---|---|---|\n")
        for r in layouts:
            step = r["sample"] + r["reward"] + r["score"] + r["optimizer"]
            diff = "—" if r.get("reward_vs_fp32") is None else f"{r['reward_vs_fp32']:.2f}"
            text += (f"| {r['dtype']} | {r['threads']} | {r['actions_mean']:.1f} | {r['sample']:.2f} | {r['reward']:.2f} | "
                     f"{r['score']:.2f} | {step:.2f} | {16 / step:.2f} | {diff} |\n")
    text += decode_table(decode_rows) if decode_rows else ""
    out = Path(args.out) if args.out else REPO / "results" / "perf" / f"{'cpu' if device.type == 'cpu' else _slug(name)}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}", file=sys.stderr)
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
