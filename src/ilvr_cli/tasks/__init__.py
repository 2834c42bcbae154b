"""The ILVR tasks as a library: ``upscale``, ``translate``, ``edit``, ``paint2img`` and ``sample`` over image
folders, as thin presets over the one sampler (see docs/tasks.md).

```python
from ilvr_cli.tasks import TaskConfig, run_task

result = run_task(TaskConfig(task="upscale", model="ffhq", input="lr/", output="out/"))
print(len(result.done), "written,", len(result.failed), "failed")
```

Names are imported on first use (PEP 562), so ``ilvr_cli.tasks.config`` stays free of torch and numpy:
the CLI parses options into a :class:`TaskConfig` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TaskConfig": "config",
    "parse_range": "config",
    "DistInfo": "distributed",
    "dist_info": "distributed",
    "shard": "distributed",
    "Settings": "plan",
    "TaskPlan": "plan",
    "WorkUnit": "plan",
    "build_units": "plan",
    "default_output": "plan",
    "plan_task": "plan",
    "open_task_model": "plan",
    "DEFAULT_STEPS": "presets",
    "PRESETS": "presets",
    "TaskPreset": "presets",
    "RunStart": "progress",
    "TaskProgress": "progress",
    "Failure": "result",
    "TaskResult": "result",
    "Timings": "result",
    "run_plan": "runner",
    "run_task": "runner",
}

__all__ = [
    "DEFAULT_STEPS",
    "DistInfo",
    "Failure",
    "PRESETS",
    "RunStart",
    "Settings",
    "TaskConfig",
    "TaskPlan",
    "TaskPreset",
    "TaskProgress",
    "TaskResult",
    "Timings",
    "WorkUnit",
    "build_units",
    "default_output",
    "dist_info",
    "open_task_model",
    "parse_range",
    "plan_task",
    "run_plan",
    "run_task",
    "shard",
]

if TYPE_CHECKING:
    from ilvr_cli.tasks.config import TaskConfig, parse_range
    from ilvr_cli.tasks.distributed import DistInfo, dist_info, shard
    from ilvr_cli.tasks.plan import (
        Settings,
        TaskPlan,
        WorkUnit,
        build_units,
        default_output,
        open_task_model,
        plan_task,
    )
    from ilvr_cli.tasks.presets import DEFAULT_STEPS, PRESETS, TaskPreset
    from ilvr_cli.tasks.progress import RunStart, TaskProgress
    from ilvr_cli.tasks.result import Failure, TaskResult, Timings
    from ilvr_cli.tasks.runner import run_plan, run_task


def PreparedModel(  # noqa: N802 - the name of the class it replaces
    network: Any, diffusion_config: Any, image_size: int, name: str, sha256: str, in_channels: int = 3
) -> Any:
    """Deprecated (0.x): use ``ModelHandle.from_network(network, diffusion_config, image_size, ...)``."""
    import warnings

    from ilvr_cli.registry.handle import ModelHandle

    warnings.warn(
        "PreparedModel is deprecated; pass ilvr_cli.registry.ModelHandle.from_network(...) to run_task",
        DeprecationWarning,
        stacklevel=2,
    )
    return ModelHandle.from_network(
        network, diffusion_config, image_size, name=name, sha256=sha256, in_channels=in_channels
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ilvr_cli.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ilvr_cli.tasks.{module}"), name)
