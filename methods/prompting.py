"""Zero-shot and k-shot prompting: the base policy, no training (`method.shots=k`).

k-shot puts the task's first k demonstrations, worked out, in front of every policy prompt:
`policy_prompt(demo) + rationale + observation(demo) + "\\n"` each, the observation left out where
the policy could not write it (`tasks.base.policy_demonstration`: arithmetic's ". The answer is
14."), the layout the arithmetic task uses for its own `policy_shots` (tests/test_baselines.py
checks that they agree). The module declares it as `evaluation_task`: the task the evaluated
engine shows the policy; the reward prompt is untouched.

`method.decoding` picks how evaluation decodes from the base LM (the paper's continuation baselines,
section 4.1): the engine's sampler at `train.eval_temperature` (`sample`, the default), or greedy,
beam search, diverse beam search, nucleus or tempered sampling (`methods/engine/decoding.py`), each
given the n = `train.eval_samples` samples evaluation asks per query. The module declares it as
`decoding`. Beam searches refuse tasks with a tool (arithmetic's calculator); the others keep it in
the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from methods.base import TrainContext
from methods.engine.decoding import Decoding, DecodingName
from tasks.base import Example, Task, policy_demonstration


@dataclass
class Config:
    shots: int = field(default=0, metadata={"range": "[0, inf)",
        "help": "worked demonstrations in front of each policy prompt (0: zero-shot)"})
    decoding: DecodingName = field(default="sample", metadata={
        "help": "how evaluation decodes its n = train.eval_samples samples per query from the base LM: sample: "
                "the engine's sampler at train.eval_temperature; greedy: n copies of the greedy sample; beam: the n "
                "best of beams*n beams; diverse_beam: the n best of beam_groups*n groups' best; nucleus: top_p at "
                "temperature 1; tempered: at temperature. Beam searches refuse tasks with a tool"})
    beams: int = field(default=1, metadata={"range": "[1, inf)",
        "help": "beam and diverse_beam: beams per sample asked, beams*n beams per query (paper: 1 and 5)"})
    beam_groups: int = field(default=1, metadata={"range": "[1, inf)",
        "help": "diverse_beam: groups per sample asked, beam_groups*n groups of beams/beam_groups beams "
                "(paper: 1, i.e. n groups)"})
    diversity_penalty: float = field(default=1.0, metadata={"range": "[0, inf)",
        "help": "diverse_beam: log-prob cost, in a candidate's rank, of each earlier group that chose the same "
                "token at the same step (Hamming diversity; paper: 1.0)"})
    top_p: float = field(default=0.95, metadata={"range": "(0, 1]",
        "help": "nucleus: probability held by the most likely tokens that are sampled from (paper: 0.95)"})
    temperature: float = field(default=0.8, metadata={"range": "(0, inf)",
        "help": "tempered: sampling temperature (paper: 0.8, the continuation task's final reward temperature)"})


class FewShotTask:
    """`task` with `context` in front of every policy prompt; everything else is the task's own."""

    def __init__(self, task: Task, context: str):
        self.task, self.context = task, context

    def __getattr__(self, name: str):
        return getattr(self.task, name)  # only reached for what this class does not define

    def policy_prompt(self, ex: Example) -> str:
        return self.context + self.task.policy_prompt(ex)


# Nothing is trained, so the harness runs this method in one process whatever trainer.num_processes says.
TRAINS = False


def few_shot(task: Task, shots: int) -> Task:
    """The task as seen with `shots` worked demonstrations in the policy prompt."""
    if shots < 0:
        raise ValueError(f"prompting: method.shots={shots} must be >= 0")
    if shots == 0:
        return task
    # Two sources of shots would stack without anyone asking for it.
    task_shots = getattr(getattr(task, "config", None), "policy_shots", 0)
    if task_shots:
        raise ValueError(f"prompting: method.shots={shots} and task.policy_shots={task_shots} both add "
                         "demonstrations to the policy prompt; set only one of them")
    demos = [ex for ex in task.demonstrations() if ex.rationale][:shots]
    if len(demos) < shots:
        raise ValueError(f"prompting: method.shots={shots}, but task {task.name!r} has only "
                         f"{len(demos)} demonstrations with a rationale")
    context = "".join(policy_demonstration(task, task.policy_prompt(ex), ex) for ex in demos)
    return FewShotTask(task, context)


# --- what evaluation uses instead of the task's own prompts and the engine's sampler -----------------

def evaluation_task(cfg: Config, task: Task) -> Task:
    """The task as the evaluated policy sees it: with `method.shots` worked demonstrations."""
    return few_shot(task, cfg.shots)


def decoding(cfg: Config) -> Decoding | None:
    """How evaluation decodes its samples per query; None: the engine's own sampler."""
    if cfg.decoding == "sample":
        return None
    return Decoding(cfg.decoding, cfg.beams, cfg.beam_groups, cfg.diversity_penalty, cfg.top_p, cfg.temperature)


def check(cfg: Config, task: Task) -> None:
    """Refuse settings that cannot work on `task` (the harness calls this before a run starts)."""
    shown = evaluation_task(cfg, task)
    decode = decoding(cfg)
    if decode is not None:
        decode.check(shown)


def train(ctx: TrainContext, cfg: Config) -> None:
    """Nothing to learn: evaluation samples from `evaluation_task` with `decoding`."""
    check(cfg, ctx.task)
