"""Tasks: synthetic instruction-following languages with a gold scorer.

`make_task(name)` builds a registered task; unknown names list the valid ones. A task
whose prompts come from files (the user's own data) is built from its assets directory:
`make_task(name, assets_dir)`; its class sets `needs_assets_dir = True`.
"""

from __future__ import annotations

from textenv.tasks.arithmetic import ArithmeticTask
from textenv.tasks.base import Task
from textenv.tasks.dialogue import DialogueTask
from textenv.tasks.jsonl import JsonlTask
from textenv.tasks.reviews import ReviewsTask
from textenv.tasks.sequences import SequencesTask

TASKS = {"reviews": ReviewsTask, "arithmetic": ArithmeticTask,
         "dialogue": DialogueTask, "sequences": SequencesTask,
         "jsonl": JsonlTask}


def check_task_name(name: str) -> None:
    """ValueError listing the valid names unless `name` is a registered task."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")


def make_task(name: str | Task, assets_dir=None) -> Task:
    """Return the task called `name` (or `name` itself if it already is a task). Tasks
    that read their prompts from files need the `assets_dir` they were built into."""
    if not isinstance(name, str):
        return name
    check_task_name(name)
    cls = TASKS[name]
    if getattr(cls, "needs_assets_dir", False):
        if assets_dir is None:
            raise ValueError(f"task {name!r} reads its data from an assets directory: pass "
                             f"assets_dir= (built by `textenv build-assets --task {name}`)")
        return cls(assets_dir)
    return cls()


__all__ = ["TASKS", "ReviewsTask", "Task", "check_task_name", "make_task"]
