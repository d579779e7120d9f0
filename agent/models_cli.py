"""``shortlist models``: what a model registry holds, and putting an older version back in service.

The agent serves the newest complete version of its ``--models`` folder (agent/models.py), so a rollback
is a republish: ``shortlist.manifest.republish`` copies the chosen version, hashes checked, under the next
version number, atomically; the agent re-embeds the pool with it and swaps as for any new version. Version
numbers only grow, and every version ever served stays in the folder to go back to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent import client
from agent.cli import json_line
from agent.cli_options import AgentTarget, agent_options
from shortlist.manifest import ManifestError, check_version, list_versions, republish

models_app = typer.Typer(no_args_is_help=True, help="The model registry: list its versions, roll back to one.")

ModelsOpt = typer.Option(..., "--models", help="the registry folder (what `shortlist serve --models` serves)")


def _registry(models: Path) -> Path:
    if not models.is_dir():
        raise typer.BadParameter(f"{models} is not a folder (give the registry `shortlist export` publishes into "
                                 "and `shortlist serve --models` serves)", param_hint="'--models'")
    return models


def version_rows(models: Path) -> list[dict[str, Any]]:
    """One dict per version folder, oldest first: name, ``complete`` and, when it is not, ``problem``
    (check_version's reason, hashes checked), else what the manifest says about it."""
    rows: list[dict[str, Any]] = []
    for name in list_versions(models):
        try:
            m = check_version(models / name, verify_hashes=True)
        except ManifestError as e:
            rows.append({"version": name, "complete": False, "problem": str(e)})
            continue
        rows.append({"version": name, "complete": True, "created": m.created, "method": m.method, "arch": m.arch,
                     "embedding_dim": m.embedding_dim, "classes": m.classes or [], "dataset": m.dataset,
                     "source_run": m.source_run, "republished_from": m.republished_from})
    return rows


@models_app.command("list")
def list_command(models: Path = ModelsOpt,
                 as_json: bool = typer.Option(False, "--json", help="one JSON object per version on stdout")) -> None:
    """Every version in the registry, oldest first: complete (hashes checked) or why not, and what it is.
    An agent serving this folder serves the newest complete one."""
    rows = version_rows(_registry(models))
    if as_json:
        for r in rows:
            print(json_line(r))
        return
    out = Console()
    if not rows:
        out.print(f"no versions in {escape(str(models))} (publish one with `shortlist export RUN --models "
                  f"{escape(str(models))}`)", highlight=False)
        return
    table = Table(title=str(models))
    for col in ("version", "created", "method", "arch", "dim", "classes", "from", "state"):
        table.add_column(col, no_wrap=col in ("version", "created"))
    for r in rows:
        if not r["complete"]:
            table.add_row(r["version"], "", "", "", "", "", "", "[red]not served[/] (below)")
            continue
        table.add_row(r["version"], r["created"][:16].replace("T", " "), r["method"], r["arch"],
                      str(r["embedding_dim"]), str(len(r["classes"])) if r["classes"] else "—",
                      f"copy of {r['republished_from']}" if r["republished_from"] else "", "complete")
    out.print(table)
    for r in rows:  # the reasons under the table: they are sentences, too long for a cell
        if not r["complete"]:
            out.print(f"{r['version']} is not served: {r['problem']}", markup=False, highlight=False)
    newest = [r["version"] for r in rows if r["complete"]]
    out.print(f"newest complete: {newest[-1]} (what an agent serving this folder serves; `shortlist status` says "
              "which it serves now)" if newest else "no complete version: an agent serving this folder has no model",
              highlight=False)


@models_app.command("rollback")
@agent_options
def rollback(agent: AgentTarget,
             version: str = typer.Argument(..., help="the version to serve again, e.g. v0003"),
             models: Path = ModelsOpt,
             no_reload: bool = typer.Option(False, "--no-reload", help="publish only; do not ask the agent to "
                                            "reload (it takes the version up at its next registry check)"),
             as_json: bool = typer.Option(False, "--json", help="the outcome as one JSON object on stdout")) -> None:
    """Serve an older version again: publish a copy of it (hashes checked) as the next version, then ask
    the agent to reload and say what it made of it. The versions in between stay in the registry."""
    registry = _registry(models)
    if version not in list_versions(registry):
        known = ", ".join(list_versions(registry)) or "none"
        raise typer.BadParameter(f"no version {version!r} in {registry} (versions: {known}; `shortlist models "
                                 "list` shows them)", param_hint="VERSION")
    try:
        new = republish(registry, version)
    except ManifestError as e:
        typer.echo(f"{version} cannot be served again: {e}", err=True)
        raise typer.Exit(1) from None
    except OSError as e:
        typer.echo(f"could not publish a copy of {version} into {registry}: {e}; nothing was published", err=True)
        raise typer.Exit(1) from None
    outcome: dict[str, Any] = {"published": new, "copy_of": version, "registry": str(registry)}
    message = f"published {new}, a copy of {version}, in {registry}"
    if not no_reload:
        try:
            st = client.reload_model(agent.connect(), new)
        except (client.AgentUnavailable, grpc.RpcError) as e:
            why = client.detail(e) if isinstance(e, grpc.RpcError) else str(e)
            outcome["agent"] = {"error": why}
            message += (f"; the agent at {agent.address} was not asked to reload ({why}): an agent serving this "
                        "folder takes it up at its next registry check")
        else:
            outcome["agent"] = {"serving": st.model_version, "embedding": st.pending_model_version,
                                "refused": client.refusal(st, new) or ""}
            if st.model_version == new:
                message += f"; the agent at {agent.address} serves it"
            elif st.pending_model_version == new:
                message += (f"; the agent at {agent.address} is embedding the pool with it and serves "
                            f"{st.model_version or 'nothing'} until then (`shortlist status` shows the progress)")
            else:
                message += (f"; the agent at {agent.address} has not taken it up: "
                            + (client.refusal(st, new) or f"is {registry} the folder it serves "
                               "(`shortlist serve --models`)?"))
    if as_json:
        print(json_line(outcome))
    else:
        Console().print(escape(message), highlight=False)
