"""Zero-shot and k-shot prompting: the base policy, no training (`method.shots=k`).

k-shot puts the task's first k demonstrations, worked out, in front of every policy prompt:
`policy_prompt(demo) + rationale + observation(demo) + "\\n"` each, the layout the arithmetic task
uses for its own `policy_shots` (tests/test_baselines.py checks that they agree). The harness
evaluates through `ctx.engine`, so giving the engine the k-shot view of the task is all it takes;
the reward prompt is untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from methods.base import TrainContext
from tasks.base import Example, Task


@dataclass
class Config:
    shots: int = field(default=0, metadata={
        "help": "worked demonstrations in front of each policy prompt (0: zero-shot)"})


class FewShotTask:
    """`task` with `context` in front of every policy prompt; everything else is the task's own."""

    def __init__(self, task: Task, context: str):
        self.task, self.context = task, context

    def __getattr__(self, name: str):
        return getattr(self.task, name)  # only reached for what this class does not define

    def policy_prompt(self, ex: Example) -> str:
        return self.context + self.task.policy_prompt(ex)


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
    context = "".join(task.policy_prompt(ex) + ex.rationale + task.observation(ex) + "\n" for ex in demos)
    return FewShotTask(task, context)


def train(ctx: TrainContext, cfg: Config) -> None:
    """Nothing to learn: only the prompts the evaluation samples from change."""
    ctx.engine.task = few_shot(ctx.task, cfg.shots)
