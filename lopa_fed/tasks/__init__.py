"""The task registry: GLUE classification and code generation behind one :class:`Task` interface.

>>> from lopa_fed.tasks import get_task
>>> get_task("sst2").defaults.max_length, get_task("mbpp").defaults.model
(256, 'smollm2')

Every caller asks the task (:attr:`Task.defaults`, :meth:`Task.read`, :meth:`Task.encode`,
:meth:`Task.evaluate`, :meth:`Task.check`) instead of branching on its family.
"""

from __future__ import annotations

from ..data import label_counts, train_val_split
from ..errors import DataError, UnknownTaskError
from .base import SPLITS, Task, TaskDefaults
from .code import CODE_TASKS, CodeExample, CodeTask
from .files import DATA_DIR_ENV, Example, resolve_data_dir
from .glue import GLUE_TASKS, GlueTask

__all__ = [
    "CODE_TASKS",
    "DATA_DIR_ENV",
    "GLUE_TASKS",
    "SPLITS",
    "TASKS",
    "CodeExample",
    "CodeTask",
    "DataError",
    "Example",
    "GlueTask",
    "Task",
    "TaskDefaults",
    "UnknownTaskError",
    "get_task",
    "label_counts",
    "resolve_data_dir",
    "train_val_split",
]

#: Every task by name: GLUE first, then the code tasks.
TASKS: dict[str, Task] = {**GLUE_TASKS, **CODE_TASKS}


def _norm_name(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def get_task(name: str) -> Task:
    """Look a task up by name, case-insensitively (hyphens and underscores ignored).

    Parameters
    ----------
    name : str
        ``"sst2"``, ``"SST-2"``, ``"RTE"``, ``"cruxeval-o"``, ``"MBPP"``, ...

    Returns
    -------
    Task
        A :class:`GlueTask` or a :class:`CodeTask`.

    Raises
    ------
    UnknownTaskError
        The name is not known; the message lists the known task names.
    """
    key = _norm_name(str(name))
    for t in TASKS.values():
        if key in (_norm_name(t.name), _norm_name(getattr(t, "glue_dir", t.name))):
            return t
    raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
