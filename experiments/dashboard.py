"""``maskstudy dashboard SWEEP_DIR``: one W&B workspace per sweep, the panels reviewers read.

Built with ``wandb-workspaces``. The workspace shows the sweep's runs (filtered on
``logging.group`` = the sweep id, which ``maskstudy sweep`` sets) grouped by recipe (config
``name``), so every panel aggregates seeds as mean +- std:

    Average AUC      eval/avg_auc and the domain averages per recipe
    Per-task AUC     eval/<task>/auc per recipe
    Training         train/loss, train/grad_norm over steps
    Mask             mask/alpha, mask/future_weight_mean, mask/future_attention/layer<k>
    Heat maps        mask/heatmap images over steps

Publishing needs W&B credentials and network (``Workspace.save()``); ``--dry-run`` prints the
workspace's JSON spec instead, which is also what the tests check.
"""

from __future__ import annotations

import json
from pathlib import Path

SECTIONS = ("Learning", "Average AUC", "Per-task AUC", "Training", "Mask", "Heat maps")


def sweep_facts(sweep_dir: str | Path) -> tuple[str, list[str], list[str]]:
    """(sweep id, task names, domains) from a local sweep directory."""
    sweep_dir = Path(sweep_dir)
    state = sweep_dir / "sweep.json"
    if not state.exists():
        raise FileNotFoundError(f"{state}: not a sweep directory (run `maskstudy sweep` first)")
    sweep_id = json.loads(state.read_text())["id"]
    tasks, domains = [], []
    for path in sorted(sweep_dir.rglob("results.json")):
        res = json.loads(path.read_text())
        if "tasks" in res:
            tasks = list(res["tasks"])
            domains = list(dict.fromkeys((res.get("domains") or {}).values()))
            break
    return sweep_id, tasks, domains


def build_workspace(sweep_id: str, tasks: list[str], domains: list[str], *, entity: str,
                    project: str):
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def bars(title, metrics):
        return wr.BarPlot(title=title, metrics=metrics, groupby="name", groupby_aggfunc="mean",
                          groupby_rangefunc="stddev")

    def lines(title, y=None, regex=None):
        return wr.LinePlot(title=title, y=y or [], metric_regex=regex, groupby="name",
                           groupby_aggfunc="mean", groupby_rangefunc="stddev")

    sections = [
        # read first: an AUC is a result only where the encoder learned
        ws.Section(name="Learning", is_open=True, panels=[
            lines("val retrieval of the own answer vs chance",
                  ["val/retrieval_acc", "val/retrieval_chance"]),
            lines("train loss vs its chance value", ["train/loss", "train/kept_chance"]),
            lines("user embedding spread vs isotropic",
                  ["train/user_spread", "train/spread_isotropic"]),
            lines("effective rank of user embeddings", ["train/user_rank"]),
            bars("learning check passed (share of runs)", ["learning/passed"])]),
        ws.Section(name="Average AUC", is_open=True, panels=[
            bars("average test AUC per recipe", ["eval/avg_auc"]),
            bars("average KS per recipe", ["eval/avg_ks"]),
            *[bars(f"{d} average AUC", [f"eval/{d}/avg_auc"]) for d in domains]]),
        ws.Section(name="Per-task AUC", panels=[bars(f"{t} AUC", [f"eval/{t}/auc"])
                                                for t in tasks]),
        ws.Section(name="Training", panels=[lines("training loss", ["train/loss"]),
                                            lines("gradient norm", ["train/grad_norm"])]),
        ws.Section(name="Mask", panels=[
            lines("mask alpha (ramp progress)", ["mask/alpha"]),
            lines("mean future-key weight", ["mask/future_weight_mean"]),
            lines("attention mass on later keys, per layer",
                  regex="mask/future_attention/layer.*")]),
        ws.Section(name="Heat maps", panels=[wr.MediaBrowser(title="mask heat maps",
                                                             media_keys=["mask/heatmap"])]),
    ]
    return ws.Workspace(
        entity=entity, project=project, name=f"maskstudy sweep {sweep_id}", sections=sections,
        runset_settings=ws.RunsetSettings(filters=[ws.Config("logging.group") == sweep_id],
                                          groupby=[ws.Config("name")]))


def workspace_json(workspace) -> dict:
    """The workspace spec as W&B stores it (built offline)."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True))


def dashboard(sweep_dir: str | Path, *, entity: str, project: str = "maskstudy",
              dry_run: bool = False) -> str:
    """Publishes the workspace and returns its URL; with ``dry_run`` returns the JSON spec."""
    sweep_id, tasks, domains = sweep_facts(sweep_dir)
    workspace = build_workspace(sweep_id, tasks, domains, entity=entity, project=project)
    if dry_run:
        return json.dumps(workspace_json(workspace), indent=2)
    workspace.save()
    return workspace.url
