"""Tasks: synthetic instruction-following languages with a gold scorer.

`make_task(name)` builds a registered task; unknown names list the valid ones.
"""

from __future__ import annotations

from textenv.tasks.base import Task
from textenv.tasks.reviews import ReviewsTask

TASKS = {"reviews": ReviewsTask}


def make_task(name: str | Task) -> Task:
    """Return the task called `name` (or `name` itself if it already is a task)."""
    if not isinstance(name, str):
        return name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


__all__ = ["TASKS", "ReviewsTask", "Task", "make_task"]
