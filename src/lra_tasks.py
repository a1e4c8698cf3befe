"""The Long Range Arena tasks, listed once.

``scripts/lra_grid.py`` (which runs to launch), ``scripts/lra_table.py`` (columns and the
published reference row) and the config test read this list, so a new task is one config file
under ``configs/lra/`` plus one line here. The configs stay the source of every training
setting (tau, steps, data); this module only names them. It lives outside ``src/data`` and
``src/models`` because it describes experiments, not code that trains, and it imports nothing,
so the scripts load it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LRATask:
    """One task: its key, its config, its column title and the published softmax accuracy.

    ``name`` is also the config's logger name, so runs land in ``logs/<name>/<attention>/``.
    """

    name: str
    config: str  # relative to the repository root
    title: str
    reference_acc: float  # softmax, % (Nystromformer paper's harness, which the YOSO paper used)

    @property
    def config_path(self) -> Path:
        return ROOT / self.config


# In the paper's column order.
TASKS: dict[str, LRATask] = {
    task.name: task
    for task in (
        LRATask("listops", "configs/lra/listops.yaml", "ListOps", 37.10),
        LRATask("text", "configs/lra/text.yaml", "Text", 65.02),
        LRATask("retrieval", "configs/lra/retrieval.yaml", "Retrieval", 79.35),
        LRATask("image", "configs/lra/image.yaml", "Image", 38.20),
        LRATask("pathfinder", "configs/lra/pathfinder.yaml", "Pathfinder", 74.16),
    )
}
REFERENCE_LABEL = "softmax (reference harness)"
REFERENCE_AVERAGE = 58.77  # as published (the mean of the five, rounded once)
