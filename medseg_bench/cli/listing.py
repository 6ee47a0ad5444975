"""`medseg-bench list tasks|archs|encoders|losses|augs|metrics`."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class What(str, Enum):
    tasks = "tasks"
    archs = "archs"
    encoders = "encoders"
    losses = "losses"
    augs = "augs"
    metrics = "metrics"


def list_items(what: Annotated[str | None, typer.Argument(
        metavar="WHAT", help="What to list: tasks, archs, encoders, losses, augs or metrics.")] = None
) -> None:
    """List what the registries hold."""
    chosen = _what(what)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=chosen.value, show_lines=False)

    def row(*cells: str) -> None:  # names and paths as text: `[red]` in a folder's name is no markup
        table.add_row(*(escape(cell) for cell in cells))
    if chosen is What.tasks:
        from medseg_bench.data.catalog import task_registry

        for col in ("name", "imaging", "modalities", "labels", "from"):
            table.add_column(col)
        for name, t in task_registry().items():
            labels = ", ".join(f"{k} {v}" for k, v in t.labels.items() if k)
            row(name, t.imaging, ", ".join(t.modalities), labels, t.source_file)
    elif chosen is What.archs:
        from medseg_bench.models import ARCHS

        for col in ("name", "dims", "aliases", "description"):
            table.add_column(col)
        for name, a in ARCHS.items():
            row(name, ", ".join(a.dims), ", ".join(ARCHS.aliases_of(name)), a.description)
    elif chosen is What.encoders:
        from segmentation_models_pytorch.encoders import encoders

        from medseg_bench.models import ARCHS

        fixed = [f"{name}: {' or '.join(a.variants['2d'].encoders or ())}" for name, a in ARCHS.items()
                 if "2d" in a.variants and a.variants["2d"].encoders is not None]
        table.caption = (f"Encoders of the 2D smp archs (--encoder), also tu-<name> for any timm model, e.g. "
                         f"tu-convnext_tiny; {'; '.join(fixed)} (torchvision); 3D nets take no encoder")
        table.add_column("name")
        table.add_column("--pretrained: smp has ImageNet weights (read from the Hugging Face cache, "
                         "never downloaded)")
        for name, entry in encoders.items():
            row(name, "yes" if "imagenet" in entry["pretrained_settings"] else "no")
    elif chosen is What.losses:
        from medseg_bench.losses import LOSSES, REGION_LOSSES

        def first_line(factory: object) -> str:
            return (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""

        table.add_column("name")
        table.add_column("description")
        table.add_column("--target regions (its region form)")
        for name, factory in LOSSES.items():
            region_form = first_line(REGION_LOSSES.get(name)) if name in REGION_LOSSES else "-"
            row(name, first_line(factory), region_form)
    elif chosen is What.augs:
        from medseg_bench.augment import AUGS

        table.add_column("name")
        table.add_column("steps (probability)")
        for name, steps in AUGS.items():
            row(name, ", ".join(s.describe() for s in steps) or "-")
    else:
        from medseg_bench.metrics import METRICS

        for col in ("name", "better", "unit", "description"):
            table.add_column(col)
        for name, m in METRICS.items():
            row(name, "higher" if m.higher_is_better else "lower", m.unit or "-", m.description)
    terminal = Console()  # a terminal's own width; piped or captured, wide enough for a row a line
    (terminal if terminal.is_terminal else Console(width=200)).print(table)


def _what(name: str | None) -> What:
    """`name` as a What; a UsageError with a did-you-mean for a typo (`task`), as every name elsewhere."""
    from medseg_bench.errors import UsageError

    choices = [item.value for item in What]
    if name is None:
        raise UsageError(f"say what to list: {', '.join(choices)}")
    if name in choices:
        return What(name)
    from medseg_bench.registry import choice_hint

    raise UsageError(f"unknown list '{name}'; {choice_hint(name, choices)}")

