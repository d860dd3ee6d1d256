"""An experiment's data modules, and the probe's view of them."""

from __future__ import annotations

import numpy as np
import torch

from maskstudy.datamodules.datamodules import ContrastiveDataModule, ProbeDataModule
from maskstudy.datamodules.pairs import REFERENCE_SENTENCE

from .config import ExperimentConfig


class ProbeSourceAdapter:
    """The linear-probe callback's view of a ProbeDataModule (callbacks never import data)."""

    def __init__(self, dm: ProbeDataModule, suite: str):
        self.dm = dm
        self.task_names = dm.task_names
        self.labels = dm.probe.labels
        self.domains = {t.name: t.domain(suite) for t in dm.probe.tasks}
        self.queries = {t.name: t.scenario for t in dm.probe.tasks}
        self.targets = {t.name: t.targeting(dm.spec) for t in dm.probe.tasks}
        # users are ranked under the query their answers were aligned with in training
        self.targeting_query = dm.cfg.behaviour_query
        self.targeting_reference = REFERENCE_SENTENCE

    def test_mask(self, task: str) -> np.ndarray:
        return self.dm.probe.test_mask(task)

    def history_events(self) -> np.ndarray:
        return self.dm.probe.history_events()

    def dataloader(self, query: str | None = None, reserve: int = 0):
        return self.dm.probe_dataloader(all_ranks=True, query=query, reserve=reserve)

    def suffix(self, query: str) -> list[int]:
        return self.dm.suffix(query)

    def sentences(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dm.sentences(texts)


def suite_of(tasks: list[str]) -> str:
    return "qanchor" if tasks == ["qanchor"] else "ggsm"


def probe_datamodule(cfg: ExperimentConfig, template=None) -> ProbeDataModule:
    """The probe users of ``cfg`` as its model reads them (``cfg.input``); ``template``: one
    already validated and tokenised, shared with the training data module."""
    shared = {"validate": False} if template is not None else {}
    dm = ProbeDataModule(cfg.data, tasks=cfg.eval.resolved_tasks(), input=cfg.input,
                         test_fraction=cfg.eval.test_fraction,
                         min_class_users=cfg.eval.min_class_users,
                         sparse_tasks=cfg.eval.sparse_tasks, **shared)
    if template is not None:
        dm.template = template
    dm.setup()
    return dm


def build_datamodules(cfg: ExperimentConfig) -> tuple[ContrastiveDataModule, ProbeDataModule]:
    train_dm = ContrastiveDataModule(cfg.data, input=cfg.input,
                                     scenarios=cfg.scenario_tasks())
    train_dm.setup()
    return train_dm, probe_datamodule(cfg, train_dm.template)
