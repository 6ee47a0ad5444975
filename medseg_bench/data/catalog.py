"""The task catalog: packaged `tasks/*.yaml` plus `$MEDSEG_BENCH_HOME/tasks/*.yaml` (the user's file wins)."""

from __future__ import annotations

from pathlib import Path

from medseg_bench.errors import UsageError
from medseg_bench.registry import Registry
from medseg_bench.settings import get_settings, packaged_tasks_dir
from medseg_bench.spec import TaskSpec
from medseg_bench.yaml_files import read_yaml_file


def _load_task_file(path: Path) -> TaskSpec:
    data = read_yaml_file(path, "task file")
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a task file must be a YAML mapping")
    spec = TaskSpec.from_dict(data, source_file=path)
    if spec.name != path.stem:
        raise UsageError(f"{path}: task name '{spec.name}' does not match the file name")
    return spec


def task_registry() -> Registry[TaskSpec]:
    """Build the task registry from the task folders (read on every call: the user may add files)."""
    found: dict[str, Path] = {}
    for folder in (packaged_tasks_dir(), get_settings().user_tasks_dir):
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found[path.stem] = path  # later folders (the user's) win
    registry: Registry[TaskSpec] = Registry("task")
    for name, path in sorted(found.items()):
        registry.add(name, _load_task_file(path))
    return registry


def get_task(name: str) -> TaskSpec:
    return task_registry().get(name)
