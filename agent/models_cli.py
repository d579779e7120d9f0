"""``shortlist models``: what a model registry holds, putting an older version back in service, and removing
old versions (``import``, publishing an ONNX encoder Shortlist did not train, is agent/models_import.py).

The agent serves the newest complete version of its ``--models`` folder (agent/models.py), so a rollback
is a republish: ``shortlist.manifest.republish`` copies the chosen version, hashes checked, under the next
version number, atomically; the agent re-embeds the pool with it and swaps as for any new version (at once,
with the served embeddings, when the copy is the same model as the served one), abandoning a version it was
embedding meanwhile. Version numbers only grow, never reused even when folders are removed (the registry's
high-water mark, shortlist.manifest.publish). A copy that would change nothing (of what the agent serves
while it moves to no other, or is embedding the pool with; when the agent does not answer, of the newest
complete version) is refused: re-embedding a pool with an identical model can take hours. The agent is asked
first: the registry alone cannot tell a served folder changed in place, or a newest version the agent refused.

``list`` runs the agent's own load check (agent.embedder.load_check: onnxruntime on the CPU, a batch of blank
images and one of synthetic ones) on complete versions newest first until one passes: that one is what an
agent serving the folder would serve (unless the agent refused it on its stored samples, which only the agent
knows: ``--agent`` asks it, ``agent_view``), the newer ones are marked refused with the agent's reason, and
older ones are listed as not checked (``--check-all`` checks them too; each check loads the model, which takes
a while for big ones). Nothing is cached. ``rollback`` refuses a version the load check refuses, before
publishing anything.

``prune`` removes old versions: all complete versions but the newest ``--keep``, the newest that passes the load
check (what an agent started on the folder serves) and the ones the agent serves or is embedding, each
atomically (shortlist.manifest.remove_version); nothing when that agent does not answer, unless
``--without-agent`` says to keep the newest (and the newest loadable) only. Safe because their numbers are
never used again: an agent's stored embeddings stay tied to the model that made them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent import client
from agent.cli import json_line
from agent.cli_options import AgentTarget, agent_options, optional_agent_options
from agent.embedder import ModelRefused, load_check, newest_servable
from agent.errors import quoted
from agent.models import FAILED_ON_SAMPLES, SERVED_FOLDER
from shortlist.console import make_console
from shortlist.manifest import (
    Manifest,
    ManifestError,
    NothingToPublish,
    RegistryError,
    check_version,
    clear_trash,
    copy_changes_nothing,
    highest_published,
    list_versions,
    newest_complete,
    read_complete,
    registry_mistake,
    remove_version,
    republish,
    same_model,
    version_bytes,
    version_name,
    version_number,
)
from shortlist.v1 import agent_pb2, agent_pb2_grpc

models_app = typer.Typer(no_args_is_help=True, help="The model registry: list its versions, roll back to one, "
                         "remove old ones, import an ONNX encoder Shortlist did not train.")

ModelsOpt = typer.Option(..., "--models", help="the registry folder (what `shortlist serve --models` serves)")


def _not_a_registry(models: Path) -> str:
    return (f"{models} is not a folder (give the registry `shortlist export` publishes into and `shortlist serve "
            "--models` serves)")


def registry_problem(models: Path) -> str:
    """Why ``models`` cannot be the registry a ``shortlist models`` command works on ("" when it can): not a
    folder, or a training run, image or version folder given by mistake (``registry_mistake``, the check
    ``shortlist export`` and ``serve`` make too). One check for every command here."""
    if not models.is_dir():
        return registry_mistake(models) or _not_a_registry(models)
    return registry_mistake(models)


def _registry(models: Path) -> Path:
    """``models`` when it can be a registry; BadParameter (exit 2) saying why not (``registry_problem``)."""
    if problem := registry_problem(models):
        raise typer.BadParameter(problem, param_hint="'--models'")
    return models


def version_rows(models: Path, load: str = "none") -> list[dict[str, Any]]:
    """One dict per version folder, oldest first: name, ``complete`` and, when it is not, ``problem``
    (check_version's reason, hashes checked), else what the manifest says about it. ``load``: "served" runs
    the agent's load check on complete versions newest first until one passes ("all": on every complete
    version; "none": on none); checked rows get ``loads`` (True/False), ``refused`` (the reason, or "") and the
    one an agent serves ``served`` True; unchecked complete rows have ``loads`` None."""
    rows: list[dict[str, Any]] = []
    manifests: dict[str, Manifest] = {}
    for name in list_versions(models):
        try:
            m = check_version(models / name, verify_hashes=True)
        except ManifestError as e:
            rows.append({"version": name, "complete": False, "problem": str(e)})
            continue
        manifests[name] = m
        rows.append({"version": name, "complete": True, "created": m.created, "method": m.method, "arch": m.arch,
                     "embedding_dim": m.embedding_dim, "classes": m.classes or [], "dataset": m.dataset,
                     "source_run": m.source_run, "republished_from": m.republished_from, "loads": None,
                     "refused": "", "served": False})
    served = False
    for r in reversed(rows) if load != "none" else ():
        if not r["complete"]:
            continue
        if served and load != "all":
            break
        try:
            load_check(models / r["version"], manifests[r["version"]])
        except ModelRefused as e:
            r["loads"], r["refused"] = False, str(e)
            continue
        r["loads"] = True
        if not served:
            r["served"] = served = True
    return rows


def agent_view(rows: list[dict[str, Any]], agent: AgentTarget) -> tuple[str, agent_pb2.Status | None]:
    """Mark ``rows`` (``version_rows``') with what ``agent`` makes of each version (GetStatus): ``agent`` is
    "serving", "embedding", "refused"
    (``agent_refused``: its reason, stored by the agent, kept across its restarts) or "". A version whose folder
    is not complete now can still be the one served (changed in place after the agent loaded it: it serves the
    model it loaded). Returns ("", its status) when it answered, else (a sentence saying why not, None), rows
    left unmarked."""
    try:
        st = agent.connect().GetStatus(agent_pb2.GetStatusRequest())
    except (client.AgentUnavailable, grpc.RpcError) as e:
        if refused := _refused(agent, e):  # it answered: no to this caller
            return f"{refused}: what it serves and refused is not shown", None
        why = client.detail(e) if isinstance(e, grpc.RpcError) else str(e)
        return f"the agent at {agent.address} did not answer ({why}): what it serves and refused is not shown", None
    for r in rows:
        v = r["version"]
        refused = None if v in (st.model_version, st.pending_model_version) else client.refusal(st, v)
        r["agent"] = ("serving" if v == st.model_version else "embedding" if v == st.pending_model_version else
                      "refused" if refused and r["complete"] else "")
        r["agent_refused"] = (refused or "") if r["complete"] else ""
    return "", st


def agent_says(rows: list[dict[str, Any]], address: str, st: agent_pb2.Status, models: Path) -> str:
    """The sentence under ``models list --agent``'s table saying what the agent at ``address`` (status ``st``)
    serves, always (``rows``: ``version_rows``' marked by ``agent_view``), with what its folder is now when
    that is no longer what an agent started on ``models`` would serve: not complete (changed in place after the
    agent loaded it) or gone; and the agent's own warnings about that folder (``SERVED_FOLDER``)."""
    served = st.model_version
    if not served:
        said = f"the agent at {address} serves no version"
    else:
        said = f"the agent at {address} serves {served}"
        row = next((r for r in rows if r["version"] == served), None)
        if row is None:
            said += (f", whose folder is not in {models} (removed or renamed since it loaded it, or the agent serves "
                     "another registry): it serves the model it loaded; a restart would not serve it")
        elif not row["complete"]:
            said += (", whose folder is not complete any more (above: changed after the agent loaded it): it serves "
                     "the model it loaded; a restart would refuse it")
    if st.pending_model_version:
        said += f" and is embedding the pool with {st.pending_model_version}"
    # What the agent says of the served folder (changed in place, another model there now, gone): a row the
    # load check finds complete can hold another model than the one the agent loaded, which only the agent knows.
    warned = [w for w in st.warnings if SERVED_FOLDER in w]
    return said + "".join(f"; it warns: {w}" for w in warned)


@models_app.command("list")
@optional_agent_options("HOST:PORT of the agent serving this folder: also say which version it serves, is "
                        "embedding, or refused (e.g. a model that failed on its stored samples, which the load "
                        "check cannot see); --token, --tls-* as for every agent command (default: no agent asked)")
def list_command(agent: AgentTarget | None, models: Path = ModelsOpt,
                 as_json: bool = typer.Option(False, "--json", help="one JSON object per version on stdout"),
                 check_all: bool = typer.Option(False, "--check-all", help="run the agent's load check on every "
                                                "complete version, not only down to the one an agent serves")
                 ) -> None:
    """Every version in the registry, oldest first: complete (hashes checked) or why not, and what it is. The
    agent's own load check runs on complete versions newest first until one passes: that one is what an agent
    serving this folder would serve, unless the agent refused it while embedding its stored samples with it
    (--agent, or `shortlist status`, says); newer ones the check refuses are marked with the reason; older ones
    are not checked (unless --check-all)."""
    rows = version_rows(_registry(models), "all" if check_all else "served")
    unanswered, st = agent_view(rows, agent) if agent else ("", None)
    if as_json:
        for r in rows:
            print(json_line(r))
        return
    out = Console()
    if not out.is_terminal:  # a file or a log: rich would squeeze the table into 80 columns and cut cells
        out = Console(width=max(out.width, 400))
    from shortlist.manifest import staging_note  # what killed exports left
    if note := staging_note(models):
        out.print(f"warning: {note}", markup=False, highlight=False)
    if unanswered:
        out.print(f"warning: {unanswered}", markup=False, highlight=False)
    if not rows:
        out.print(f"no versions in {escape(str(models))} (publish one with `shortlist export --run RUN --models "
                  f"{escape(str(models))}`)", highlight=False)
        return
    table = Table(title=str(models))
    for col in ("version", "created", "method", "arch", "dim", "classes", "from", "state"):
        table.add_column(col, no_wrap=col in ("version", "created"), overflow="fold")  # fold, never cut
    for r in rows:
        if not r["complete"]:
            state = ("[red]not complete[/] (below); [green]the agent serves the model it loaded[/]"
                     if r.get("agent") == "serving" else "[red]not served[/] (below)")
            table.add_row(r["version"], "", "", "", "", "", "", state)
            continue
        state = ("[green]would be served[/] (complete, loads)" if r["served"] else "[red]refused[/] (below)"
                 if r["loads"] is False else "complete, loads" if r["loads"] else "complete (load not checked)")
        said = {"serving": "[green]the agent serves it[/]", "embedding": "the agent is embedding its pool with it",
                "refused": "[red]refused by the agent[/] (below)"}.get(r.get("agent", ""))
        state += f"; {said}" if said else ""
        table.add_row(r["version"], r["created"][:16].replace("T", " "), r["method"], r["arch"],
                      str(r["embedding_dim"]), str(len(r["classes"])) if r["classes"] else "—",
                      f"copy of {r['republished_from']}" if r["republished_from"] else "", state)
    out.print(table)
    for r in rows:  # the reasons under the table: they are sentences, too long for a cell
        if not r["complete"]:
            what = "'s folder is not complete any more" if r.get("agent") == "serving" else " is not served"
            out.print(f"{r['version']}{what}: {r['problem']}", markup=False, highlight=False)
        elif r["loads"] is False:
            out.print(f"{r['version']} is refused by the agent's load check: {r['refused']}", markup=False,
                      highlight=False)
        if r.get("agent_refused") and agent is not None:  # only an agent asked marks rows
            out.print(f"the agent at {agent.address} refused {r['version']}: {r['agent_refused']}", markup=False,
                      highlight=False)
    served = [r["version"] for r in rows if r.get("served")]
    if st is not None and agent:
        out.print(agent_says(rows, agent.address, st, models), markup=False, highlight=False)
    out.print(f"would be served: {served[0]} (the newest complete version that passes the agent's load check, on "
              "blank and synthetic images: what an agent serving this folder serves, unless it refused it while "
              "embedding its stored samples with it, a refusal it keeps across restarts; `shortlist status` or "
              "`shortlist models list --agent HOST:PORT` says which it serves and what it refused)" if served else
              "no complete version passes the agent's load check: an agent serving this folder has no model",
              highlight=False)
    out.print(_next_version(models), markup=False, highlight=False)


def _next_version(models: Path) -> str:
    """The sentence saying which number the next version published in ``models`` gets."""
    try:
        nxt = version_name(highest_published(models) + 1)
    except RegistryError as e:
        return f"the next version cannot be published: {e}"
    return f"next version published here: {nxt} (the number of a removed version is never used again)"


@models_app.command("rollback")
@agent_options
def rollback(agent: AgentTarget,
             version: str = typer.Argument(..., help="the version to serve again, e.g. v0003"),
             models: Path = ModelsOpt,
             no_reload: bool = typer.Option(False, "--no-reload", help="publish only; do not ask the agent what "
                                            "it serves or to reload (it takes the version up at its next "
                                            "registry check)"),
             force: bool = typer.Option(False, "--force", help="publish the copy even when VERSION is the newest "
                                        "complete version and no agent answered to say what it serves (e.g. it "
                                        "serves a newer version whose folder was changed in place, or refused "
                                        "VERSION); when the agent refused VERSION because it failed on the stored "
                                        "samples; or when it serves VERSION and warns that its folder changed "
                                        "since it loaded it (the copy is of the folder as it is now)"),
             as_json: bool = typer.Option(False, "--json", help="the outcome as one JSON object on stdout")) -> None:
    """Serve an older version again: publish a copy of it (hashes checked) as the next version, then ask
    the agent to reload and say what it made of it. The versions in between stay in the registry. The agent is
    asked what it serves first: refused (nothing published) when it serves VERSION (or the same model) and is
    moving to no other version, or is embedding the pool with it: the copy would change nothing. When the agent
    does not answer (or --no-reload), refused when VERSION is the newest complete version (an agent serving the
    folder serves it, unless it refused it or serves a newer one whose folder changed in place: --force
    publishes anyway). Refused too when the agent's load check refuses VERSION, or the agent refused VERSION
    because it failed on the stored samples: it would refuse the copy; and when the agent serves VERSION as it
    loaded it but warns that its folder changed since: the copy would be of the changed folder (--force
    publishes in these two cases)."""

    def fail(message: str, code: int) -> NoReturn:
        _fail(message, code, as_json, {"published": None, "copy_of": version})

    if problem := registry_problem(models):
        fail(problem, 2)
    registry = models
    if version not in list_versions(registry):
        known = ", ".join(list_versions(registry)) or "none"
        fail(f"no version {quoted(version)} in {registry} (versions: {known}; `shortlist models list` shows them)", 2)
    try:
        source = check_version(registry / version, verify_hashes=True)
    except ManifestError as e:
        fail(f"{version} cannot be served again: {e}", 1)
    try:
        load_check(registry / version, source)  # the agent's own: a copy it refuses would change nothing
    except ModelRefused as e:
        fail(f"{version} cannot be served again: the agent refuses it: {e}; nothing was published (publish a "
             "fixed version instead)", 1)
    # What the agent serves decides (the registry alone cannot say: the agent may serve a newer version whose
    # folder was changed in place, or have refused the newest); the registry decides only when it does not answer.
    stub, st, unknown = (None, None, "--no-reload: the agent was not asked what it serves") if no_reload else \
        _agent_status(agent, fail)
    newest = newest_complete(registry)
    unless_newest = newest[0] if newest is not None and (st is not None or force) else ""
    if st is not None:
        if not force:
            _unless_failed_on_samples(agent, st, version, fail)
        _unless_served(agent, st, version, source, registry, force, fail)
    elif not force and (same := copy_changes_nothing(registry, version, source)):  # asked again under the lock
        fail(f"{same}: an agent serving this folder serves it, or is embedding the pool with it, unless it refused "
             f"it or serves a newer version whose folder was changed after it loaded it; {unknown}; nothing was "
             "published (`shortlist status` says what the agent serves; --force publishes the copy anyway)", 1)
    try:
        new = republish(registry, version, unless_unchanged=True, unless_newest=unless_newest)
    except NothingToPublish as e:  # another rollback published it since the check above
        fail(f"{e}: another rollback has published a copy of it since this one looked; nothing was published", 1)
    except ManifestError as e:
        fail(f"{version} cannot be served again: {e}", 1)
    except (OSError, RegistryError) as e:
        fail(f"could not publish a copy of {version} into {registry}: {e}; nothing was published", 1)
    # "agent" always: null when it was not asked (--no-reload), so a script reads the documented keys either way
    outcome: dict[str, Any] = {"published": new, "copy_of": version, "registry": str(registry), "agent": None}
    message = f"published {new}, a copy of {version}, in {registry}"
    if not no_reload:
        outcome["agent"], said = _reload(agent, stub, new, registry)
        message += said
    if as_json:
        print(json_line(outcome))
    else:
        make_console().print(escape(message), highlight=False)


def _agent_status(agent: AgentTarget, fail: Callable[[str, int], NoReturn]
                  ) -> tuple[agent_pb2_grpc.AgentStub | None, agent_pb2.Status | None, str]:
    """Before ``models rollback`` publishes: (a stub connected to the agent, its status, "") when it answers;
    (None, None, why not) when it does not (the agent takes the copy up at its next check); ``fail`` (exit 1)
    when it refuses the call (no token, a wrong one): what it serves is unknown, and it would refuse the reload."""
    try:
        stub = agent.connect()
        return stub, stub.GetStatus(agent_pb2.GetStatusRequest()), ""
    except (client.AgentUnavailable, grpc.RpcError) as e:
        if refused := _refused(agent, e):
            fail(f"{refused}; nothing was published (or --no-reload publishes the copy without asking the agent: "
                 "one serving this folder takes it up at its next registry check)", 1)
        why = client.detail(e) if isinstance(e, grpc.RpcError) else str(e)
        return None, None, f"the agent at {agent.address} did not answer ({why}), so what it serves is not known"


def _unless_failed_on_samples(agent: AgentTarget, st: agent_pb2.Status, version: str,
                              fail: Callable[[str, int], NoReturn]) -> None:
    """``fail`` (exit 1) when the agent (status ``st``) refused ``version`` because its model failed while the
    pool was embedded with it: a copy is the same model and would fail on the same samples, after re-embedding
    them for nothing. (Other refusals, e.g. its folder changed while it was embedded, do not carry over to a
    copy: it is published.)"""
    why = client.refusal(st, version)
    if why and FAILED_ON_SAMPLES in why:
        fail(f"{version} cannot be served again: the agent at {agent.address} refused {version} because it failed "
             f"on the stored samples ({why}); a copy would fail on them again; nothing was published (roll back to "
             "another version, publish a fixed model, or --force to publish the copy anyway)", 1)


def _unless_served(agent: AgentTarget, st: agent_pb2.Status, version: str, source: Manifest, registry: Path,
                   force: bool, fail: Callable[[str, int], NoReturn]) -> None:
    """``fail`` (exit 1) when the agent (status ``st``) serves ``version`` (manifest ``source``), or the same
    model under another version, and is moving to no other; or is embedding the pool with it: a copy would
    change nothing. (The served or pending version's folder is read as it is now: one changed in place since the
    agent loaded it no longer shows its model, and the copy is published.) When it serves ``version`` itself and
    warns that its folder changed since it loaded it, a copy would publish the changed folder, not the model it
    serves: refused with that said, unless ``force``."""
    def same(name: str) -> bool:
        if not name:
            return False
        m = read_complete(registry / name, verify_hashes=False)
        return name == version or (m is not None and same_model(m, source))

    pending = st.pending_model_version
    changed = [w for w in st.warnings if SERVED_FOLDER in w]
    if not pending and st.model_version == version and changed:
        if force:
            return
        fail(f"the agent at {agent.address} serves {version} as it was loaded, but its folder has changed since (it "
             f"warns: {changed[0]}); a copy would publish the folder as it is now, not the model it serves; nothing "
             f"was published (put {registry / version} back as it was, or roll back to another version, or --force "
             "to publish the folder as it is now)", 1)
    if not pending and same(st.model_version):
        also = "" if st.model_version == version else f" as {st.model_version}"
        fail(f"the agent at {agent.address} serves {version}{also} already and is not moving to another "
             "version; nothing was published", 1)
    if same(pending):
        also = "" if pending == version else f" (as {pending})"
        fail(f"the agent at {agent.address} is embedding the pool with {version}{also} already (it serves "
             f"{st.model_version or 'nothing'} until then; `shortlist status` shows the progress); nothing was "
             "published", 1)


def _reload(agent: AgentTarget, stub: agent_pb2_grpc.AgentStub | None, new: str,
            registry: Path) -> tuple[dict[str, Any], str]:
    """Ask the agent (through ``stub``, else a new connection) to reload and take up ``new``: the outcome's
    ``agent`` object and the clause that ends the message ("; the agent at ... ")."""
    try:
        st = client.reload_model(stub if stub is not None else agent.connect(), new)
    except (client.AgentUnavailable, grpc.RpcError) as e:
        why = client.detail(e) if isinstance(e, grpc.RpcError) else str(e)
        if refused := _refused(agent, e):
            return {"error": why}, f"; {refused}: an agent serving this folder takes it up at its next registry check"
        return {"error": why}, (f"; the agent at {agent.address} was not asked to reload ({why}): an agent serving "
                                "this folder takes it up at its next registry check")
    state, said = _taken_up(st, new, registry)
    return ({"serving": st.model_version, "embedding": st.pending_model_version,
             "refused": client.refusal(st, new) or "", "state": state},
            f"; the agent at {agent.address} " + said)


REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)  # it answered: no to this caller


def _refused(agent: AgentTarget, e: Exception) -> str | None:
    """For a call the agent answered with a refusal of the caller (no token, a wrong one, a token without the
    right): what to say; None for any other failure (no answer, an error)."""
    if not isinstance(e, grpc.Call) or e.code() not in REFUSALS:
        return None
    said = client.detail(e)
    hint = ("" if "--token" in said else " (pass --token)" if e.code() == grpc.StatusCode.UNAUTHENTICATED else
            " (pass --token with a token that may make it)")
    return f"the agent at {agent.address} refused the call: {e.code().name}: {said}{hint}"


def _fail(message: str, code: int, as_json: bool, fields: dict[str, Any]) -> NoReturn:
    """Say why a command did nothing (stderr) and exit with ``code``; with --json also as a JSON object on
    stdout (``error`` and ``fields``), so a script that parses stdout gets an answer whatever happened (the
    rule of every command's --json: shortlist.console ``json_errors``)."""
    if as_json:
        print(json_line({"error": message, **fields}))
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _taken_up(st: agent_pb2.Status, new: str, registry: Path) -> tuple[str, str]:
    """What the agent made of ``new``, from its status after ReloadModel: (``serving`` | ``embedding`` |
    ``refused`` | ``busy`` | ``superseded`` | ``not_taken_up``, a sentence). An agent embedding another
    version is busy, not looking at another folder: it takes ``new`` up after the batch under way."""
    no = version_number(new) or 0
    pending = st.pending_model_version
    if st.model_version == new:
        return "serving", "serves it"
    if pending == new:
        return "embedding", (f"is embedding the pool with it and serves {st.model_version or 'nothing'} until then "
                             "(`shortlist status` shows the progress)")
    refused = client.refusal(st, new)
    if refused:
        return "refused", f"has not taken it up: {refused}"
    newer = [v for v in (pending, st.model_version) if (version_number(v) or 0) > no]
    if newer:
        doing = "is embedding the pool with" if newer[0] == pending else "serves"
        return "superseded", f"{doing} {newer[0]}, newer than {new}, so it will not serve {new}"
    if pending:
        return "busy", (f"is still embedding the pool with {pending} (it serves {st.model_version or 'nothing'}); it "
                        f"abandons {pending} for {new} when the batch under way is done (`shortlist status` shows "
                        "when)")
    return "not_taken_up", (f"has not taken it up: is {registry} the folder it serves (`shortlist serve "
                            "--models`)?")


@models_app.command("prune")
@agent_options
def prune(agent: AgentTarget,
          models: Path = ModelsOpt,
          keep: int = typer.Option(..., "--keep", min=1, help="how many of the newest complete versions to keep"),
          dry_run: bool = typer.Option(False, "--dry-run", help="say what would be removed; remove nothing"),
          without_agent: bool = typer.Option(False, "--without-agent", help="ask no agent: keep only the newest "
                                             "KEEP complete versions (an agent serving an older one from this "
                                             "folder loses its folder; it serves the newest after a restart)"),
          as_json: bool = typer.Option(False, "--json", help="the outcome as one JSON object on stdout")) -> None:
    """Remove old versions: every complete version but the newest KEEP, the newest one the agent's load check
    passes (what an agent started on this folder serves) and the ones the agent at --agent serves or is
    embedding the pool with. The newest complete version is always kept; folders that are not complete
    (broken, or still being copied) are left alone. Each folder is first renamed to a hidden trash name (at
    once out of the registry: no agent loads it), then deleted. Their numbers are never used again, so an agent
    never takes a removed model's embeddings for a new one. When the agent does not answer nothing is removed
    (exit 1): give --agent HOST:PORT of the agent serving this folder, or --without-agent to keep only the
    newest KEEP. Exit 1 when a folder could not be removed (the others are), 2 for a bad option."""
    if problem := registry_problem(models):  # a run, image or version folder: nothing to prune, and not a registry
        _fail(problem, 2, as_json, {"removed": []})
    rows = version_rows(models)
    complete = [r["version"] for r in rows if r["complete"]]
    newest = "the newest complete version" if keep == 1 else f"one of the newest {keep} complete versions"
    why: dict[str, str] = {v: newest for v in complete[-keep:]}
    outcome: dict[str, Any] = {"registry": str(models), "dry_run": dry_run}
    if without_agent:
        outcome["agent"] = None
        kept = "the newest complete version" if keep == 1 else f"the newest {keep} complete versions"
        notes = [f"--without-agent: kept {kept} only (and the newest one that passes the agent's load check); an "
                 "agent serving an older one from this folder keeps serving it, warns, and after a restart serves "
                 "the newest that loads"]
    else:
        try:
            st = agent.connect().GetStatus(agent_pb2.GetStatusRequest())
        except (client.AgentUnavailable, grpc.RpcError) as e:
            said = client.detail(e) if isinstance(e, grpc.RpcError) else str(e)
            if refused := _refused(agent, e):
                message = (f"{refused}; nothing was removed: what it serves or is embedding is not known (or "
                           f"--without-agent keeps only the newest {keep} complete versions)")
            else:
                message = (f"no agent answered at {agent.address} ({said}); nothing was removed: an agent may serve "
                           f"an older version from {models}. Pass --agent HOST:PORT of the agent serving this "
                           "folder (what it serves or is embedding is kept), or --without-agent to keep only the "
                           f"newest {keep} complete versions")
            _fail(message, 1, as_json, {**outcome, "removed": [], "agent": {"address": agent.address, "error": said}})
        outcome["agent"] = {"address": agent.address, "serving": st.model_version,
                            "embedding": st.pending_model_version}
        notes = []
        for version, doing in ((st.model_version, "serves it"), (st.pending_model_version, "is embedding the pool "
                                                                                           "with it")):
            if version in complete and version not in why:
                why[version] = f"the agent at {agent.address} {doing}"
    servable = newest_servable(models)  # newer versions the agent refuses must not leave it with none after a restart
    if not isinstance(servable, str) and servable[0] not in why:
        why[servable[0]] = ("the newest complete version that passes the agent's load check (what an agent started "
                            "on this folder serves; the newer ones are refused)")
    removable = [v for v in complete if v not in why]
    left = [{"version": r["version"], "problem": r["problem"]} for r in rows if not r["complete"]]
    removed, freed, errors = _remove(models, removable, dry_run)
    outcome.update({"kept": sorted(why, key=lambda v: version_number(v) or 0), "kept_because": why,
                    "removed": removed, "freed_bytes": freed, "left": left, "errors": errors})
    try:
        outcome["next_version"] = version_name(highest_published(models) + 1)
    except RegistryError as e:
        errors.append(str(e))
    if as_json:
        print(json_line(outcome))
    else:
        _print_pruned(models, outcome, notes)
    if errors:
        raise typer.Exit(1)


def _remove(models: Path, removable: list[str], dry_run: bool) -> tuple[list[str], int, list[str]]:
    """Remove ``removable`` from the registry ``models`` (first the trash an interrupted prune left): the
    versions removed (with ``dry_run``: all of them, nothing touched), the bytes freed (would free) and what
    went wrong (one sentence each; the other versions are still removed)."""
    if dry_run:  # what removing them would free
        return removable, sum(version_bytes(models / v) for v in removable), []
    removed: list[str] = []
    errors: list[str] = []
    freed = 0
    try:
        clear_trash(models)  # what an interrupted prune left
    except OSError as e:
        errors.append(f"could not delete a trash folder an earlier prune left: {e}")
    for version in removable:
        try:
            freed += remove_version(models, version)
        except (OSError, RegistryError, ValueError) as e:
            errors.append(f"{version} was not removed: {e}")
        else:
            removed.append(version)
    return removed, freed, errors


def _print_pruned(models: Path, outcome: dict[str, Any], notes: list[str]) -> None:
    """``models prune``'s outcome (the object ``--json`` prints) for people: what went and the bytes freed,
    what was kept and why, the folders left alone, ``notes``, then the next version's number on stdout, or
    the errors on stderr."""
    gone, freed, why, errors = outcome["removed"], outcome["freed_bytes"], outcome["kept_because"], outcome["errors"]
    out = make_console()
    if not gone:
        out.print(f"nothing to remove from {models}", markup=False, highlight=False)
    elif outcome["dry_run"]:
        out.print(f"would remove {', '.join(gone)} from {models}, freeing {freed / 1e6:.1f} MB (--dry-run: "
                  "nothing removed)", markup=False, highlight=False)
    else:
        out.print(f"removed {', '.join(gone)} from {models} ({freed / 1e6:.1f} MB)", markup=False,
                  highlight=False)
    for version in outcome["kept"]:
        out.print(f"kept {version}: {why[version]}", markup=False, highlight=False)
    for r in outcome["left"]:
        out.print(f"left {r['version']} alone: not complete ({r['problem']}); remove it by hand if it is not being "
                  "copied", markup=False, highlight=False)
    for line in notes:
        out.print(line, markup=False, highlight=False)
    if not errors:
        out.print(_next_version(models), markup=False, highlight=False)
    for error in errors:
        typer.echo(error, err=True)
