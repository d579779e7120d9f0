"""Label Studio ML backend, served by the web app at ``/labelstudio`` (no ``label-studio-ml`` dependency).

A Label Studio project connected to ``http://AGENT:P/labelstudio`` (Settings > Model) calls:

- ``GET /health`` (and ``GET /``): ``{"status": "UP", ...}``; 503 when the agent cannot be reached.
- ``POST /setup`` ``{"project": "ID.TIMESTAMP", "schema": LABEL_CONFIG_XML, "hostname", "access_token",
  "extra_params"}``: checks that the label config is an image classification (``<Image name=N
  value="$KEY">`` and a ``<Choices name=C toName=N>``), remembers it for the project (for a token that may
  write only: a read token's /setup changes nothing), answers
  ``{"model_version": ...}``. The access token is never stored: Shortlist never calls Label Studio.
- ``POST /predict`` ``{"tasks": [{"id", "data": {KEY: URL, ...}}, ...], "label_config", "project",
  "params"}``: ``{"results": [...]}``, one prediction per task in the tasks' order:
  ``{"result": [{"from_name": C, "to_name": N, "type": "choices", "value": {"choices": [LABEL]},
  "score": CONFIDENCE}], "score": ORDER, "model_version": ...}``. LABEL is the sample's prior label
  (PriorLabels, method ``--labelstudio-prior``) with its confidence, or its label when it already has one
  (confidence 1); ``result`` is empty for a task that matches no sample. A prior's region also carries
  ``"meta": {"text": [CALIBRATION]}``, how its confidence was calibrated (``calibration_line`` of
  PriorLabel.calibration: the agent's warning while it rests on fewer than 20 audit labels, else e.g.
  "confidences calibrated on 22 audit labels (audit or random draws) (temperature 0.62)"; none from an
  agent that does not send
  it), and the answer's ``calibration`` key has the whole Calibration as JSON (Label Studio ignores it).
  ORDER (see ``order_score``) makes an ascending sort by prediction score follow Shortlist's selection:
  the samples of the current selection (Select with ``--labelstudio-strategy`` /
  ``--labelstudio-budget``) first, in the strategy's order, then the other unlabelled samples from the
  least to the most confident prior, then the labelled ones, then the tasks that match no sample.
- ``POST /webhook`` (Label Studio's webhook events): ANNOTATION_CREATED / ANNOTATION_UPDATED (and the
  bulk ANNOTATIONS_CREATED) become SubmitLabels with source ``labelstudio`` and annotator
  ``labelstudio:USER`` (the annotation's ``completed_by``; for ANNOTATION_UPDATED its ``updated_by``, when
  sent: a reviewer's correction is the reviewer's); a skipped (cancelled) or empty annotation
  labels nothing. A choice is stored as the class /predict shows as that choice (``Schema.class_for``).
  Several annotations of one task in one event: the last listed gives the label, the others are
  ``skipped`` ("superseded"). An annotation sent again with the choice it already gave changes nothing
  (``skipped``: "already given"), so a resent event neither adds history rows nor flips a sample back.
  An ANNOTATION_UPDATED that clears the choice retracts the label that annotation gave, by the delete
  rule below. An update older (``updated_at``) than one of the same annotation already applied, a choice or
  a cleared choice, is skipped (webhooks are not ordered), and so is a create or update of an annotation
  whose delete arrived first (logged at INFO). ANNOTATIONS_DELETED (Label Studio's delete event; its body
  names the deleted annotations by id only: no task, result or user) becomes RetractLabels (source
  ``labelstudio``, annotator ``labelstudio``: the body does not say who deleted) for each deleted annotation
  whose label is still the sample's current one. The rule (``_Given``): this app remembers, for each
  annotation it turned into a label, the sample, class and annotator; a deletion retracts the sample's label
  only when that annotation is the last one this app labelled the sample from and the agent's current label of
  the sample is still that label (source ``labelstudio``, same class and annotator). A label given since by
  anyone else (the Queue, Review priors, another annotation) stays; so does everything when the annotation is
  unknown (it was made before this web app started: the memory is per process, ``MAX_GIVEN`` annotations; so
  are the ``updated_at`` and deletion memories). A delete event needs a write token even when it retracts
  nothing (an empty SubmitLabels checks it), since the deletion is remembered; so does an annotation event
that labels nothing (a cleared choice's ``updated_at`` is remembered). Every other event is answered
  200 and ignored; a body that is not a Label Studio event is 400 with what is wrong.

Tasks are matched to samples by ``MatchRule`` (agent/web/config.py, ``--labelstudio-match``): ``url``
(default; the image URL's path, or the ``d`` parameter of a local-files URL, ends with a sample's id or
uri; else, for a file uploaded to Label Studio only (``/data/upload/P/8f2a1c3e-NAME``), NAME is a
unique sample file name; never a guess between samples), ``field:NAME`` (``task.data[NAME]`` is the sample
id) or ``regex:PATTERN``
(applied to the image URL; the group named ``id``, else group 1, else the whole match is the sample id).

Auth: Label Studio's ML backend connection sends HTTP Basic auth (its "Basic Authentication" user and
password, or ``http://USER:TOKEN@AGENT:P/labelstudio`` in the URL); webhooks send their configured
headers (or the URL's user and password). The token is the Basic password (the user name is ignored),
or, as for every web route, an ``Authorization: Bearer TOKEN`` header (``Token TOKEN`` too), the login
cookie or the app's default token. Bodies must be ``Content-Type: application/json`` (415 otherwise) and a
request with a foreign ``Origin`` is refused (agent/web/guards.py): with the default token, a page of another
site could otherwise make a visitor's browser post label events. The token travels to the agent with each
call, so the agent's roles apply: /setup and /predict need a read token, /webhook a write token for any
annotation or delete event, checked before anything is remembered; gRPC errors become HTTP in
agent/web/errors.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Annotated, Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from agent.cache import LruCache
from agent.client import calibration_dict, calibration_line, first_calibration
from agent.errors import code_name, quoted
from agent.security import ROLE_CHECK_KEY, RefusalLog
from agent.web.auth import Caller, authorization_header, client_address, session, token_of, unknown_token_throttled
from agent.web.config import LabelStudioConfig, MatchRule
from agent.web.errors import HttpError, error_response
from agent.web.module import WebModule
from shortlist.v1 import agent_pb2

log = logging.getLogger(__name__)

PREFIX = "/labelstudio"
SOURCE = "labelstudio"  # SubmitLabelsRequest.source of the labels that arrive through the webhook
MODEL_CLASS = "Shortlist"
# The model version of every prediction. Label Studio 1.23 sorts and filters the Data Manager's
# "Prediction score" by the predictions of the project's model version, which it sets to the model
# connection's name when the model is connected: so it is one constant (name the connection "shortlist"),
# not one per agent model or label count (which would need picking anew in the project settings each round).
MODEL_VERSION = "shortlist"
MAX_TASKS = 10_000  # tasks in one /predict (Label Studio sends batches of up to a few hundred)
MAX_PROJECTS = 256  # label configs remembered from /setup
MAX_GIVEN = 200_000  # annotations remembered (what they labelled), for ANNOTATIONS_DELETED
MAX_STAMPS = MAX_GIVEN  # annotations whose newest applied updated_at is remembered (updates out of order)
MAX_DELETED = MAX_GIVEN  # deleted annotations remembered (a create or update arriving after the delete)
LABEL_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
DELETE_EVENTS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")

# Prediction scores (see order_score): ascending order = Shortlist's labelling order.
SELECTED_SPAN = 0.5   # the current selection: rank r of n -> 0.5 * r / n, in [0, 0.5)
PRIOR_BASE = 0.5      # other unlabelled samples: 0.5 + 0.45 * prior confidence, in [0.5, 0.95]
PRIOR_SPAN = 0.45
NO_PRIOR_SCORE = 0.97  # unlabelled, but no prior yet (no labels, or not embedded yet)
LABELLED_SCORE = 0.99
UNMATCHED_SCORE = 1.0

class BadRequest(ValueError):
    """A request body Label Studio would not send; the message says what is wrong (HTTP 400)."""


class NotJson(ValueError):
    """A body not declared ``Content-Type: application/json`` (HTTP 415)."""


# ---- the label config ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Schema:
    """An image-classification label config: the ``<Choices>`` control (``from_name``) on the
    ``<Image>`` object (``to_name``) whose URL is ``task.data[data_key]``; ``choices`` are the names
    results carry (a Choice's alias, else its value); empty when the choices come from the task data."""

    from_name: str
    to_name: str
    data_key: str
    choices: tuple[str, ...]

    def choice_for(self, label: str) -> str | None:
        """The choice a Shortlist class name is shown as: itself, else the one choice that differs from it only
        in case or Unicode form (``name_key``); None when the config has no such choice or several."""
        if not self.choices or label in self.choices:
            return label
        same = [c for c in self.choices if name_key(c) == name_key(label)]
        return same[0] if len(same) == 1 else None

    def class_for(self, choice: str, classes: Sequence[str]) -> str:
        """The reverse of ``choice_for``: the class of the agent's ``classes`` that /predict shows as
        ``choice``, when exactly one is; else ``choice`` itself (the agent then accepts or refuses it)."""
        if choice in classes:
            return choice
        shown_as = [c for c in classes if self.choice_for(c) == choice]
        return shown_as[0] if len(shown_as) == 1 else choice


def name_key(name: str) -> str:
    """What the agent compares class names by (agent/limits.py ``class_name_problem``): "Fish" and "fish",
    an NFD and an NFC "Café", are one class."""
    return unicodedata.normalize("NFKC", name).casefold()


def parse_schema(xml: str) -> Schema:
    """The image-classification part of a Label Studio label config; BadRequest says what is missing."""
    if not isinstance(xml, str) or not xml.strip():
        raise BadRequest("no label config: expected the project's labeling config XML")
    try:
        root = ET.fromstring(xml)  # stdlib expat (>= 2.4.1 in Python 3.11) refuses entity expansion bombs
    except ET.ParseError as e:
        raise BadRequest(f"the label config is not valid XML ({e})") from None
    images: dict[str, str] = {}
    for el in root.iter("Image"):
        name, value = el.get("name", ""), el.get("value", "")
        if name and value.startswith("$") and len(value) > 1:
            images[name] = value[1:]
    if not images:
        raise BadRequest('the label config has no <Image name="..." value="$FIELD"/>: Shortlist pre-annotates '
                         "image classification projects")
    for el in root.iter("Choices"):
        to_name = el.get("toName", "")
        if el.get("name") and to_name in images:
            choices = tuple(c.get("alias") or c.get("value") or "" for c in el.iter("Choice") if c.get("value"))
            return Schema(el.get("name", ""), to_name, images[to_name], choices)
    raise BadRequest(f"the label config has no <Choices name=\"...\" toName=\"{next(iter(images))}\"> for its image: "
                     "Shortlist pre-annotates image classification projects (one <Choices> on an <Image>)")


# ---- tasks -> samples ----------------------------------------------------------------------------
def url_paths(url: str) -> list[str]:
    """The paths a task's image URL can name a sample by: the ``d`` parameter of a Label Studio
    local-files URL, the URL's unquoted path (without the scheme, host and leading slashes) and, for a
    cloud URL (``s3://bucket/key``), the key with and without the bucket."""
    parts = urlsplit(url)
    out: list[str] = []
    for d in parse_qs(parts.query).get("d", []):
        out.append(d.strip("/"))
    path = unquote(parts.path).strip("/")
    if parts.scheme in ("s3", "gs", "azure-blob") and parts.netloc:
        out.append(f"{parts.netloc}/{path}")
    if path:
        out.append(path)
    if not parts.scheme and not parts.netloc and not out:
        out.append(url.strip("/"))
    return out


class SampleIndex:
    """Sample ids and uris of the pool, for matching task URLs (from one ListSamples without payloads)."""

    def __init__(self, samples: Iterable[tuple[str, str]]) -> None:
        self.ids: set[str] = set()
        self.by_uri: dict[str, str] = {}
        by_name: dict[str, str | None] = {}
        for sid, uri in samples:
            self.ids.add(sid)
            keys = [sid]
            if uri:
                self.by_uri[uri] = sid
                self.by_uri.setdefault(uri.strip("/"), sid)
                keys.append(uri)
            for key in keys:
                name = PurePosixPath(key.replace("\\", "/")).name
                if name:
                    by_name[name] = sid if by_name.get(name, sid) == sid else None  # None: ambiguous
        self.by_name = {k: v for k, v in by_name.items() if v is not None}

    def exact(self, key: str) -> str | None:
        if key in self.ids:
            return key
        return self.by_uri.get(key)

    def by_url(self, url: str) -> str | None:
        found = self.exact(url)
        if found is not None:
            return found
        for path in url_paths(url):
            comps = path.split("/")
            for k in range(len(comps)):  # the longest suffix first: "a/b/c.jpg", "b/c.jpg", "c.jpg"
                found = self.exact("/".join(comps[k:]))
                if found is not None:
                    return found
        # An uploaded file only: Label Studio stores it as "data/upload/PROJECT/8f2a1c3e-NAME", which says
        # nothing of its folder, so its file name (unique in the pool) is all there is to go by. Any other URL
        # names a full path: one that matched no sample above is no sample (a deleted siteA/x.jpg must not
        # label siteB/x.jpg).
        for path in url_paths(url):
            name = PurePosixPath(path).name
            if path.startswith("data/upload/") and UPLOAD_PREFIX.match(name):
                name = UPLOAD_PREFIX.sub("", name)
                if name in self.by_name:
                    return self.by_name[name]
        return None


def match_task(task: Mapping[str, Any], schema: Schema, rule: MatchRule, index: SampleIndex) -> str | None:
    """The sample id of a task, or None when it matches none."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    if rule.kind == "field":
        value = data.get(rule.arg)
        return None if value is None else index.exact(str(value))
    url = data.get(schema.data_key)
    if not isinstance(url, str) or not url:
        return None
    if rule.kind == "regex":
        m = re.search(rule.arg, url)
        if m is None:
            return None
        key = m.group("id") if "id" in m.groupdict() else m.group(1) if m.re.groups else m.group(0)
        return None if key is None else index.exact(unquote(key))
    return index.by_url(url)


# ---- scores --------------------------------------------------------------------------------------
def order_score(rank: int | None, selected: int, labelled: bool, confidence: float | None,
                matched: bool = True) -> float:
    """The prediction score that orders a task (ascending = Shortlist's labelling order):

    - in the current selection at rank ``rank`` (0 = first) of ``selected``: ``0.5 * rank / selected``;
    - unlabelled, not selected, prior confidence c: ``0.5 + 0.45 * c`` (least confident first);
    - unlabelled without a prior: 0.97; labelled: 0.99; a task matching no sample: 1.0."""
    if not matched:
        return UNMATCHED_SCORE
    if labelled:
        return LABELLED_SCORE
    if rank is not None and selected > 0:
        return SELECTED_SPAN * rank / selected
    if confidence is None:
        return NO_PRIOR_SCORE
    return PRIOR_BASE + PRIOR_SPAN * min(max(confidence, 0.0), 1.0)


# ---- tokens --------------------------------------------------------------------------------------
class Unauthorized(ValueError):
    """An Authorization header this backend cannot read (HTTP 401)."""


def request_token(request: Request) -> str:
    """The Shortlist token of a request: the password of HTTP Basic auth (Label Studio's model connection
    "Basic Authentication", or ``USER:TOKEN@`` in the URL; the user name is ignored, or is the token when
    the password is empty), else what every web route takes (``Authorization: Bearer TOKEN``, the login
    cookie, the app's default token; agent/web/auth.py). ``Token TOKEN`` is accepted like Bearer. Unauthorized
    for more than one Authorization header (which would count is not for this backend to guess)."""
    try:
        header = authorization_header(request).strip()
    except HttpError as e:
        raise Unauthorized(e.message) from None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Basic authorization header") from None
        return password or user
    if scheme.lower() == "token" and value:
        return value
    if header and scheme.lower() != "bearer":
        raise Unauthorized(f"unsupported authorization scheme {quoted(scheme)}: use Basic (the token as the password) "
                           "or Bearer TOKEN")
    return token_of(request)


# /predict or a webhook without `label_config` in a project no write token's /setup was remembered for.
NO_CONFIG = ("no label config in the request, and none remembered for this project: send `label_config` (Label "
             "Studio does), or connect the model again with a token that may write (a read token's /setup is "
             "answered but not remembered)")


def _code(e: grpc.RpcError) -> grpc.StatusCode:
    return e.code()  # type: ignore[attr-defined,no-any-return]


def _details(e: grpc.RpcError) -> str:
    return e.details() or ""  # type: ignore[attr-defined,no-any-return]


# ---- the backend ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Given:
    """The label an annotation gave through the webhook: ``sample`` got ``label`` from ``annotator``."""

    sample: str
    label: str
    annotator: str


@dataclass
class _Selection:
    key: tuple[Any, ...]
    rank: dict[str, int]
    problem: str = ""


# ---- the webhook's payload -----------------------------------------------------------------------
# Label Studio's webhook bodies as far as the backend reads them; other fields are ignored. A field the backend
# only passes along or compares stays ``Any``, as Label Studio sends it (ids are numbers; a user is an id, or an
# object with its email). The structure is checked strictly, never coerced: a `result` or task `data` of another
# JSON type is refused, not converted. Each failure answers BadRequest with what to send (the callers' messages).
class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# An id Label Studio sends (a number; a string such as a project's "ID.CREATED"): compared and used as a key,
# so an object or a list there is refused (it was a TypeError, a 500, when used as a dict key).
_Id = Annotated[int, Strict()] | Annotated[str, Strict()] | None


class _Event(_Payload):
    """Any webhook event: its ``action`` (a non-empty string, e.g. "ANNOTATION_CREATED")."""

    action: Annotated[str, Strict(), Field(min_length=1)]


class _Project(_Payload):
    """The event's ``project`` object: its id (Label Studio's uid "ID.CREATED" or a plain ID) and, when sent,
    its label config XML (``_schema`` checks it)."""

    id: _Id = None
    label_config: Any = None


class _Annotation(_Payload):
    """An annotation of an annotation event: ``result`` (a list of regions; only those of the schema's Choices
    are read, ``_choice``), its task's id, whether it was skipped (``was_cancelled``), who made it and who last
    updated it (a user id or object), and when (ISO 8601 strings, ``_stamp``)."""

    id: _Id = None
    task: _Id = None
    result: Annotated[list[Any], Strict()]
    was_cancelled: Any = None
    completed_by: Any = None
    updated_by: Any = None
    updated_at: Any = None
    created_at: Any = None


class _Task(_Payload):
    """A task of an annotation event: its id and ``data`` (an object; the fields ``match_task`` reads)."""

    id: _Id = None
    data: Annotated[dict[str, Any], Strict()]


class _Deleted(_Payload):
    """An annotation of a delete event: its id (a number or a string, and there)."""

    id: Annotated[int, Strict()] | Annotated[str, Strict()]


_DELETED = TypeAdapter(Annotated[list[_Deleted], Strict()])
_CHOICES = TypeAdapter(Annotated[list[Annotated[str, Strict()]], Strict()])
_M = TypeVar("_M", bound=BaseModel)


def _valid(model: type[_M], value: Any) -> _M | None:
    """``value`` as ``model``, or None when it is not one."""
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


class _Choice(NamedTuple):
    """The label an annotation of an event gives: its annotation's and task's ids, the annotator
    (``labelstudio:USER``), the class, and when the annotation was saved (None: unknown)."""

    annotation: Any
    annotator: str
    label: str
    task: Any
    stamp: datetime | None


class _Cleared(NamedTuple):
    """An update that gives no choice (cleared): annotation and task ids, when it was saved, why no label."""

    annotation: Any
    task: Any
    stamp: datetime | None
    problem: str


class _Label(NamedTuple):
    """A label to send: (project id, annotation id) it comes from, the sample, class, annotator and stamp."""

    key: tuple[str, str]
    sample: str
    label: str
    annotator: str
    stamp: datetime | None


@dataclass
class _Tally:
    """What a label event's answer lists beside its counts: annotations ``skipped`` (each a dict with why), and
    the ids of those ``gone`` (deleted in Label Studio before the event arrived: logged once)."""

    skipped: list[dict[str, Any]] = field(default_factory=list)
    gone: list[Any] = field(default_factory=list)


class LabelStudioBackend:
    """The protocol's logic, one per web app (``app.state.labelstudio``); thread-safe (routes run in the
    threadpool). Every agent call goes through the request's ``Caller`` (its token), so the agent's roles
    apply; grpc.RpcError escapes to agent/web/errors.py."""

    def __init__(self, config: LabelStudioConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        # the four memories below are LRU-bounded by agent.cache.LruCache, recent by their last write (read with
        # ``peek`` / ``in``, which leave the order as it is)
        self._schemas: LruCache[str] = LruCache(MAX_PROJECTS)  # project id -> label config from /setup
        self._index: tuple[int, SampleIndex] | None = None
        self._selection: _Selection | None = None
        # (project id, annotation id) -> the label it gave; sample id -> the annotation it was last labelled from
        self._given: LruCache[_Given] = LruCache(MAX_GIVEN)
        self._last: dict[str, tuple[str, str]] = {}
        # (project id, annotation id) -> the newest updated_at (else created_at) applied, whether the update gave
        # a choice or cleared it: an older update arriving after it is skipped (Label Studio's webhooks are not
        # ordered). Kept after a deletion or a clear, unlike ``_given``, so a late older choice does not come back.
        self._stamps: LruCache[datetime] = LruCache(MAX_STAMPS)
        # (project id, annotation id) of annotations deleted in Label Studio: a create or update of one of them
        # arriving after its delete (not ordered either) is skipped. Label Studio never reuses an annotation id.
        self._gone: LruCache[bool] = LruCache(MAX_DELETED)
        # annotations the agent refused: a WARNING with the sample and the reason, at most one line every 10 s
        self._refusals = RefusalLog()

    # -- helpers
    def _remember(self, project: str, xml: str) -> None:
        with self._lock:
            self._schemas.put(project, xml)

    def _schema(self, xml: Any, project: Any) -> Schema:
        if isinstance(xml, str) and xml.strip():
            return parse_schema(xml)
        with self._lock:
            known = self._schemas.peek(_project_id(project))
        if known is None:
            raise BadRequest(NO_CONFIG)
        return parse_schema(known)

    @staticmethod
    def _about(status: agent_pb2.Status) -> dict[str, Any]:
        """What the predictions are made from (extra keys of /setup and /predict; Label Studio ignores them)."""
        return {"agent_model_version": status.model_version, "labelled": status.labeled}

    def _sample_index(self, call: Caller, status: agent_pb2.Status) -> SampleIndex:
        with self._lock:
            if self._index is not None and self._index[0] == status.samples:
                return self._index[1]
        samples = call(call.stub.ListSamples, agent_pb2.ListSamplesRequest(), call.config.select_timeout_s)
        index = SampleIndex((s.id, s.uri) for s in samples)
        with self._lock:
            self._index = (status.samples, index)
        return index

    def _ranks(self, call: Caller, status: agent_pb2.Status) -> _Selection:
        """The current selection, computed once per model version, pool, embedded count and label revision
        (``label_events``: the labelled count alone misses a retraction followed by a new label)."""
        key = (status.model_version, status.label_events, status.samples, status.embedded)
        with self._lock:
            if self._selection is not None and self._selection.key == key:
                return self._selection
        c = self.config
        try:
            reply = call(call.stub.Select, agent_pb2.SelectRequest(budget=c.budget, strategy=c.strategy, seed=c.seed),
                         call.config.select_timeout_s)
            sel = _Selection(key, {s.id: r for r, s in enumerate(reply.selected)})
        except grpc.RpcError as e:
            if _code(e) not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            log.warning("Label Studio ordering: Select %s failed: %s", c.strategy, _details(e))
            sel = _Selection(key, {}, f"Select {c.strategy}: {_details(e)}")
        with self._lock:
            self._selection = sel
        return sel

    def _priors(self, call: Caller, ids: Sequence[str]) -> dict[str, agent_pb2.PriorLabel]:
        """Prior labels of ``ids`` (unlabelled); samples that cannot have one yet are left out."""
        if not ids:
            return {}
        req = agent_pb2.PriorLabelsRequest(method=self.config.prior, ids=list(ids))
        try:
            return {p.id: p for p in call(call.stub.PriorLabels, req, call.config.select_timeout_s)}
        except grpc.RpcError as e:
            if _code(e) != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            if "not embedded" not in _details(e) or len(ids) == 1:
                return {}
        out: dict[str, agent_pb2.PriorLabel] = {}
        for i in ids:  # some are not embedded yet: ask one by one, keep those that have a prior
            out.update(self._priors(call, [i]))
        return out

    # -- the protocol
    def setup(self, call: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        """Check the project's label config and answer what the predictions are made from; remember the config
        for the project (webhooks and /predict without ``label_config`` use it) only for a token that may write:
        a read token's /setup, which serves predictions, must not change what a write token's webhooks match."""
        schema_xml = body.get("schema", body.get("label_config"))
        parse_schema(schema_xml)  # refuse a project Shortlist cannot serve at connection time
        status = call.status()
        if _may_write(call):
            self._remember(_project_id(body.get("project")), schema_xml)
        return {"model_version": MODEL_VERSION, **self._about(status)}

    def predict(self, call: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks")
        if isinstance(tasks, dict):
            tasks = [tasks]
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("`tasks` must be a list of Label Studio tasks ({\"id\": ..., \"data\": {...}})")
        if len(tasks) > MAX_TASKS:
            raise BadRequest(f"{len(tasks)} tasks in one request; send at most {MAX_TASKS}")
        schema = self._schema(body.get("label_config"), body.get("project"))
        status = call.status()  # first: the agent checks the token before anything cached is used
        version = MODEL_VERSION
        index = self._sample_index(call, status)
        ids = [match_task(t, schema, self.config.match, index) for t in tasks]
        matched = sorted({i for i in ids if i is not None})
        labels: dict[str, str] = {}
        if matched and status.labeled:
            listed = call(call.stub.ListSamples, agent_pb2.ListSamplesRequest(ids=matched))
            labels = {s.id: s.label for s in listed if s.label}
        unlabelled = [i for i in matched if i not in labels]
        selection = self._ranks(call, status) if unlabelled else None
        priors = self._priors(call, unlabelled) if status.labeled and status.model_version else {}
        cal = first_calibration(priors.values())  # on the first row of each PriorLabels stream
        meta = {"text": [calibration_line(cal)]} if cal is not None else None
        ranks = selection.rank if selection is not None else {}
        results = []
        for sid in ids:
            if sid is None:
                results.append({"result": [], "score": UNMATCHED_SCORE, "model_version": version})
                continue
            label, confidence = labels.get(sid), None
            if label is None and sid in priors:
                label, confidence = priors[sid].label, float(priors[sid].confidence)
            region = []
            choice = None if label is None else schema.choice_for(label)
            if choice is not None:
                region.append({"from_name": schema.from_name, "to_name": schema.to_name, "type": "choices",
                               "value": {"choices": [choice]},
                               "score": 1.0 if sid in labels else round(confidence or 0.0, 6)})
                if confidence is not None and meta is not None:  # a prior: how its confidence was calibrated
                    region[0]["meta"] = meta
            score = order_score(ranks.get(sid), len(ranks), sid in labels, confidence)
            results.append({"result": region, "score": round(score, 6), "model_version": version})
        about = self._about(status)
        if cal is not None:
            about["calibration"] = calibration_dict(cal)
        return {"results": results, "model_version": version, **about}

    def webhook(self, call: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        """A Label Studio webhook event (``body``, the parsed JSON object): an annotation created or updated
        labels its task's sample, one deleted takes its label back, any other event is answered "ignored".
        BadRequest (400) for a body that is not such an event, saying what is missing."""
        try:
            action = _Event.model_validate(body).action
        except ValidationError:
            raise BadRequest("not a Label Studio webhook event: no `action`") from None
        if action in DELETE_EVENTS:
            return self._deleted(call, action, body)
        if action not in LABEL_EVENTS:
            return {"status": "ignored", "action": action}
        return self._labelled(call, action, body)

    @staticmethod
    def _check_write(call: Caller) -> None:
        """The agent checks the token and that it may write (an empty SubmitLabels stores nothing; a read token is
        PERMISSION_DENIED, 403), before the event changes anything here: the ``updated_at`` and deletion
        memories decide which later events label, so a read token must not feed them."""
        call(call.stub.SubmitLabels, agent_pb2.SubmitLabelsRequest())

    def _labelled(self, call: Caller, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """An annotation event (``LABEL_EVENTS``): each annotation's choice becomes its sample's label
        (SubmitLabels, one call per annotator), an update that clears the choice takes its label back
        (``_deleted``); the answer counts them and lists what was skipped and what the agent rejected."""
        pairs = _annotations_with_tasks(action, body)
        project = _valid(_Project, body.get("project"))
        schema = self._schema(project.label_config if project else None, project.id if project else None)
        status = call.status()
        index = self._sample_index(call, status)
        project_id = _project_id(project.id if project else None)
        self._check_write(call)  # even when the event labels nothing: a cleared choice's time is remembered
        tally = _Tally()
        latest, cleared = self._choices(action, pairs, schema, status, index, tally)
        with self._lock:
            wanted = self._new_labels(latest, project_id, tally)
        accepted, rejected = self._submit(call, wanted)
        with self._lock:  # after the labels given are remembered
            clear = self._clearable(cleared, project_id, tally)
        retracted = 0
        if tally.gone:
            log.info("Label Studio %s: annotation(s) %s skipped: deleted in Label Studio before this event arrived "
                     "(webhooks are not ordered)", action, ", ".join(str(a) for a in tally.gone[:10]))
        if clear:  # as if deleted: the label goes only while it is still this annotation's (``_deleted``)
            taken = self._deleted(call, action, {"annotations": [{"id": a} for a in clear], "project": project_id},
                                  deletion=False)
            retracted = taken["retracted"]
            tally.skipped.extend(taken["skipped"])
        if tally.skipped or rejected:
            log.info("Label Studio %s: %d labels accepted, %d skipped, %d rejected", action, accepted,
                     len(tally.skipped), len(rejected))
        self._warn_rejected(action, rejected)
        return {"status": "ok", "action": action, "accepted": accepted, "rejected": rejected,
                "skipped": tally.skipped, "retracted": retracted}

    def _choices(self, action: str, pairs: list[tuple[_Annotation, Mapping[str, Any]]], schema: Schema,
                 status: agent_pb2.Status, index: SampleIndex,
                 tally: _Tally) -> tuple[dict[str, _Choice], list[_Cleared]]:
        """The label each annotation of the event gives its task's sample (sample id -> choice: the event's last
        annotation of a sample wins, the earlier ones are skipped: Label Studio lists a bulk event's annotations
        in the order they were made, and SubmitLabels takes one label per sample), and the updates that cleared
        their choice. Annotations skipped in Label Studio, with no single choice, or whose task matches no
        sample go to ``tally.skipped`` with why."""
        latest: dict[str, _Choice] = {}
        cleared: list[_Cleared] = []
        for annotation, task in pairs:
            task_id = task.get("id", annotation.task)
            aid = annotation.id
            if annotation.was_cancelled:
                tally.skipped.append({"task": task_id, "reason": "skipped in Label Studio"})
                continue
            label, problem = _choice(annotation, schema)
            if label is None:
                if action == "ANNOTATION_UPDATED" and not _choices_given(annotation, schema):
                    cleared.append(_Cleared(aid, task_id, _stamp(annotation), problem))
                else:
                    tally.skipped.append({"task": task_id, "reason": problem})
                continue
            sid = match_task(task, schema, self.config.match, index)
            if sid is None:
                tally.skipped.append({"task": task_id, "reason": f"matches no sample (rule {self.config.match})"})
                continue
            label = schema.class_for(label, status.classes)  # the class /predict showed as this choice
            before = latest.get(sid)
            if before is not None:
                tally.skipped.append({"annotation": before.annotation, "task": before.task, "id": sid,
                                      "reason": f"superseded by annotation {aid} of the same task, later in this "
                                                "event"})
            # an update is who chose the label now (a reviewer's correction), a new annotation its author
            who = annotation.updated_by if action == "ANNOTATION_UPDATED" else None
            latest[sid] = _Choice(aid, _annotator(who if who not in (None, "") else annotation.completed_by),
                                  label, task_id, _stamp(annotation))
        return latest, cleared

    def _new_labels(self, latest: dict[str, _Choice], project_id: str, tally: _Tally) -> list[_Label]:
        """The labels of ``latest`` (sample id -> choice) to send: not those of
        annotations deleted in Label Studio before the event arrived (``tally.gone``), older than an update of
        theirs already applied, or the same annotation with the same choice sent again (each to
        ``tally.skipped`` with why). The caller holds ``_lock``."""
        wanted: list[_Label] = []
        for sid, c in latest.items():
            key = (project_id, str(c.annotation))
            if key in self._gone:
                # the delete arrived first (the webhooks are not ordered): labelling now would give the sample
                # a label from an annotation Label Studio no longer has
                tally.gone.append(c.annotation)
                tally.skipped.append({"annotation": c.annotation, "task": c.task, "id": sid,
                                      "reason": "this annotation was deleted in Label Studio (its delete arrived "
                                                "first): not labelled"})
                continue
            older = self._older(key, c.stamp)
            if older:
                # Label Studio sends each event once, synchronously, but two saves in quick succession can
                # arrive out of order: the newer choice stays
                tally.skipped.append({"annotation": c.annotation, "task": c.task, "id": sid, "reason": older})
                continue
            if self._given.peek(key) == _Given(sid, c.label, c.annotator):
                # the same annotation with the same choice, sent again (Label Studio retries, an import
                # runs twice): labelling again would add a history row, or flip the sample back to it
                # after a later annotation
                tally.skipped.append({"annotation": c.annotation, "task": c.task, "id": sid,
                                      "reason": "already given (the same annotation sent again): unchanged"})
                continue
            wanted.append(_Label(key, sid, c.label, c.annotator, c.stamp))
        return wanted

    def _submit(self, call: Caller, wanted: list[_Label]) -> tuple[int, list[dict[str, str]]]:
        """Send ``wanted`` to the agent, one SubmitLabels per annotator (in the order of their first label), and
        remember the annotation each accepted label came from; (labels accepted, the agent's rejections as the
        answer lists them)."""
        by_annotator: dict[str, list[_Label]] = {}
        for c in wanted:
            by_annotator.setdefault(c.annotator, []).append(c)
        accepted = 0
        rejected: list[dict[str, str]] = []
        for annotator, given in by_annotator.items():
            req = agent_pb2.SubmitLabelsRequest(
                labels=[agent_pb2.LabelAssignment(id=c.sample, label=c.label) for c in given], annotator=annotator,
                source=SOURCE)
            reply = call(call.stub.SubmitLabels, req)
            accepted += reply.accepted
            rejected.extend({"id": r.id, "code": code_name(r.code), "reason": r.reason} for r in reply.rejected)
            refused = {r.id for r in reply.rejected}
            self._remember_given([(c.key, _Given(c.sample, c.label, annotator), c.stamp)
                                  for c in given if c.sample not in refused])
        return accepted, rejected

    def _clearable(self, cleared: list[_Cleared], project_id: str, tally: _Tally) -> list[Any]:
        """The ids of the annotations of ``cleared`` (updated to give no choice) whose label to take back: those
        this web app gave, unless deleted in Label Studio already or older than an update already applied (the
        others to ``tally.skipped`` with why). The caller holds ``_lock``."""
        clear: list[Any] = []
        for c in cleared:
            key = (project_id, str(c.annotation))
            if key in self._gone:
                tally.gone.append(c.annotation)
                tally.skipped.append({"annotation": c.annotation, "task": c.task, "reason": "this annotation was "
                                      "deleted in Label Studio (its delete arrived first): nothing to take back"})
                continue
            older = self._older(key, c.stamp)
            if older:  # a clear saved before a choice already applied: the choice stays
                tally.skipped.append({"annotation": c.annotation, "task": c.task, "reason": older})
                continue
            self._note_stamp(key, c.stamp)  # so that an older choice arriving after this clear is skipped
            if key in self._given:
                clear.append(c.annotation)
            else:
                tally.skipped.append({"annotation": c.annotation, "task": c.task, "reason": c.problem})
        return clear

    def _warn_rejected(self, action: str, rejected: list[dict[str, str]]) -> None:
        """A WARNING for annotations the agent refused (Label Studio ignores the webhook's answer, which stays
        200: a non-2xx would only make it retry the same annotation): the first sample and its reason, and how
        many more; throttled as other refusals are (RefusalLog: one line every 10 s, the next counting those
        left out), so an annotator working through a mismatched project does not flood the log."""
        if not rejected:
            return
        more = self._refusals.admit("Label Studio annotation refused by the agent", "labelstudio")
        if more is None:
            return
        first = rejected[0]
        others = f" (and {len(rejected) - 1} more in this webhook)" if len(rejected) > 1 else ""
        log.warning("Label Studio %s: the agent refused the annotation of sample %s: %s%s; it is kept in Label "
                    "Studio, not in Shortlist%s", action, first["id"], first["reason"], others, more)

    def _older(self, key: tuple[str, str], stamp: datetime | None) -> str:
        """Why an update of annotation ``key`` saved at ``stamp`` is older than one already applied, or ""
        (also when either time is unknown). The caller holds ``_lock``."""
        known = self._stamps.peek(key)
        if known is None or stamp is None or stamp >= known:
            return ""
        return (f"older (updated_at {stamp.isoformat()}) than this annotation's update already applied "
                f"({known.isoformat()}): kept")

    def _note_stamp(self, key: tuple[str, str], stamp: datetime | None) -> None:
        """Remember ``stamp`` as annotation ``key``'s newest applied update (bounded: ``MAX_STAMPS``, the
        least recently applied forgotten first). The caller holds ``_lock``."""
        if stamp is None:
            return
        known = self._stamps.peek(key)
        self._stamps.put(key, stamp if known is None or stamp > known else known)  # made recent either way

    def _remember_given(self, given: list[tuple[tuple[str, str], _Given, datetime | None]]) -> None:
        with self._lock:
            for key, g, stamp in given:
                for old_key, old in self._given.put(key, g):  # the least recently given, over MAX_GIVEN
                    if self._last.get(old.sample) == old_key:
                        del self._last[old.sample]
                self._last[g.sample] = key
                self._note_stamp(key, stamp)

    def _deleted(self, call: Caller, action: str, body: Mapping[str, Any], deletion: bool = True) -> dict[str, Any]:
        """ANNOTATIONS_DELETED: retract the labels the deleted annotations gave that are still current (the
        rule in the module docstring); the others are listed in ``skipped`` with why. ``deletion``: the
        annotations are gone from Label Studio (False for an update that cleared the choice, which may be given
        a choice again): remembered, so that a create or update of one arriving later is skipped."""
        raw = body.get("annotations", body.get("annotation"))
        try:
            listed = _DELETED.validate_python([raw] if isinstance(raw, dict) else raw)
        except ValidationError:
            raise BadRequest(f"{action} without `annotations` (a list of {{\"id\": ...}})") from None
        project = _valid(_Project, body.get("project"))
        project_id = _project_id(project.id if project else body.get("project"))
        if deletion:
            # even when there is nothing to take back: a deletion is remembered, and a read token must not keep
            # annotations from labelling (a cleared choice's caller, ``_labelled``, has checked already)
            self._check_write(call)
            with self._lock:
                for a in listed:
                    self._gone.put((project_id, str(a.id)), True)
        skipped: list[dict[str, Any]] = []
        wanted: dict[str, tuple[Any, _Given]] = {}  # sample -> (the annotation's id, its label) to take back
        with self._lock:
            for a in listed:
                key = (project_id, str(a.id))
                g = self._given.peek(key)
                if g is None:
                    skipped.append({"annotation": a.id, "reason": "not a label this web app gave since it "
                                    "started: nothing retracted"})
                elif self._last.get(g.sample) != key:
                    skipped.append({"annotation": a.id, "id": g.sample,
                                    "reason": "the sample was labelled from another annotation since"})
                else:
                    wanted[g.sample] = (a.id, g)
        retracted = 0
        if wanted:
            current = {r.id: r for r in call.stream(call.stub.ListLabels, agent_pb2.ListLabelsRequest(),
                                                    call.config.select_timeout_s) if r.id in wanted}
            ids = []
            for sid, (annotation_id, g) in wanted.items():
                r = current.get(sid)
                if r is None or (r.source, r.label, r.annotator) != (SOURCE, g.label, g.annotator):
                    skipped.append({"annotation": annotation_id, "id": sid, "reason": "the sample's label is no longer "
                                    "this annotation's (labelled or taken back since): kept"})
                else:
                    ids.append(sid)
            if ids:
                reply = call(call.stub.RetractLabels, agent_pb2.RetractLabelsRequest(
                    ids=ids, annotator=_annotator(None), source=SOURCE))
                retracted = reply.accepted
                skipped.extend({"id": r.id, "code": code_name(r.code), "reason": r.reason} for r in reply.rejected)
        with self._lock:  # done (an error above keeps them): a deleted annotation is never named again
            for a in listed:
                key = (project_id, str(a.id))
                g = self._given.pop(key)
                if g is not None and self._last.get(g.sample) == key:
                    del self._last[g.sample]
        if skipped:
            log.info("Label Studio %s: %d labels retracted, %d kept", action, retracted, len(skipped))
        return {"status": "ok", "action": action, "retracted": retracted, "skipped": skipped}


def _may_write(call: Caller) -> bool:
    """Whether the caller's token may write: an empty SubmitLabels (stores nothing) marked as a role check, so
    the agent logs a read token's refusal at INFO (from the local socket of ``serve --web-port``). False for a
    read token or an agent that takes no writes now; any other refusal (UNAUTHENTICATED, a busy or unreachable
    agent) escapes as for any other call: a write token's /setup is then answered with that error, not 200 with
    its config silently not remembered."""
    try:
        call.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(), metadata=(*call.metadata, (ROLE_CHECK_KEY, "1")),
                               timeout=call.config.rpc_timeout_s)
    except grpc.RpcError as e:
        if _code(e) in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION):
            return False
        raise
    return True


def _project_id(project: Any) -> str:
    """Label Studio's project uid "ID.CREATED_TIMESTAMP" (or a plain ID) -> "ID"."""
    return str(project).split(".", 1)[0] if project is not None else ""


def _annotator(completed_by: Any) -> str:
    """``labelstudio:USER``: the Label Studio user id (or email, when the annotation carries the user)."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return f"{SOURCE}:{completed_by}" if completed_by not in (None, "") else SOURCE


def _annotations_with_tasks(action: str, body: Mapping[str, Any]) -> list[tuple[_Annotation, Mapping[str, Any]]]:
    """(annotation, task) pairs of an annotation event (a bulk ANNOTATIONS_CREATED lists both; its annotations
    name their tasks by id); the task as sent (``match_task`` reads its data). BadRequest when the body lacks
    them."""
    annotation, task = body.get("annotation"), body.get("task")
    if action == "ANNOTATIONS_CREATED":
        annotations: list[Any] = annotation if isinstance(annotation, list) else [annotation]
        tasks: list[Any] = task if isinstance(task, list) else [task]
    else:
        annotations, tasks = [annotation], [task]
    try:
        good_annotations = [_Annotation.model_validate(a) for a in annotations]
    except ValidationError:
        raise BadRequest(f"{action} without `annotation` (an object with a `result` list, its `id` and `task` "
                         "numbers or strings)") from None
    if any(_valid(_Task, t) is None for t in tasks):
        raise BadRequest(f"{action} without `task` (an object with its `data`, its `id` a number or a string): use "
                         "Label Studio >= 1.4, whose annotation webhooks carry the task")
    by_id = {t.get("id"): t for t in tasks}
    pairs: list[tuple[_Annotation, Mapping[str, Any]]] = []
    for a in good_annotations:
        t = tasks[0] if len(tasks) == 1 else by_id.get(a.task)
        if t is None:
            raise BadRequest(f"{action}: annotation {a.id} is for task {a.task}, which is not in `task`")
        pairs.append((a, t))
    return pairs


def _stamp(annotation: _Annotation) -> datetime | None:
    """The annotation's ``updated_at`` (else ``created_at``), ISO 8601 as Label Studio sends it; None when
    absent or unreadable (then never compared)."""
    for value in (annotation.updated_at, annotation.created_at):
        if isinstance(value, str) and value:
            try:
                stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return None
            return stamp if stamp.tzinfo is not None else None  # naive and aware times do not compare
    return None


def _choices_given(annotation: _Annotation, schema: Schema) -> bool:
    """Whether the annotation has any choice in the schema's Choices (False: none, e.g. cleared)."""
    for item in annotation.result:
        if isinstance(item, dict) and item.get("from_name") == schema.from_name:
            value = item.get("value")
            if isinstance(value, dict) and value.get("choices"):
                return True
    return False


def _choice(annotation: _Annotation, schema: Schema) -> tuple[str | None, str]:
    """The class an annotation gives through the schema's Choices, or (None, why not)."""
    for item in annotation.result:
        if not isinstance(item, dict) or item.get("from_name") != schema.from_name:
            continue
        value = item.get("value")
        try:
            choices = _CHOICES.validate_python(value.get("choices") if isinstance(value, dict) else None)
        except ValidationError:
            raise BadRequest(f"annotation {annotation.id}: result `{schema.from_name}` has no "
                             "value.choices list") from None
        if len(choices) == 1 and choices[0]:
            return choices[0], ""
        if len(choices) > 1:
            return None, f"{len(choices)} choices selected; a Shortlist label is one class"
    return None, f"no `{schema.from_name}` choice in the annotation"


# ---- the routes ----------------------------------------------------------------------------------
router = APIRouter(prefix=PREFIX, tags=["labelstudio"])
NO_TOKEN = ("this agent requires a token: set Basic Authentication in Label Studio's model connection (the token "
            "as the password) or send `Authorization: Bearer TOKEN`")


def setup(app: FastAPI) -> None:
    """The app's one backend, with the settings of ``WebConfig.labelstudio``."""
    app.state.labelstudio = LabelStudioBackend(app.state.config.labelstudio)


def _caller(request: Request, token: str) -> Caller:
    """The request's Caller (after ``_answer``'s throttle); in the threadpool: the app's first call creates the
    channel, which can wait."""
    state = request.app.state
    return Caller(state.stub(), token, session(request).user, state.config, client_address(request),
                  state.known_tokens)


def _check_json_type(request: Request) -> None:
    """Only ``Content-Type: application/json`` (what Label Studio sends: ``requests.post(url, json=...)``)
    is read. A browser can post ``text/plain`` (or no type) across sites without a CORS preflight, so
    reading such a body as JSON would let any web page the user visits post webhook events (NotJson: 415)."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        got = f"Content-Type {quoted(content_type)}" if content_type else "no Content-Type"
        raise NotJson(f"the body must be JSON sent with Content-Type: application/json (got {got}); Label Studio "
                      "sends that, so set the header when posting by hand")


_bad_bodies = RefusalLog()  # one line per client address every 10 s at most


def _parse(raw: bytes) -> Any:
    """``raw`` as JSON, or BadRequest: one nested too deeply for Python's parser (RecursionError: a 500 and
    ~87 lines of traceback in the log for each request, before) is refused like any other that is not JSON."""
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON ({e})") from None
    except RecursionError:
        raise BadRequest("the body's JSON is nested too deeply to read: send Label Studio's task and annotation "
                         "objects as they are") from None


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, parsed in the threadpool (a large body parsed on the event loop held every
    other request meanwhile); BadRequest, logged at most once per address every 10 s, when it is none."""
    _check_json_type(request)
    raw = await request.body()
    try:
        body = await run_in_threadpool(_parse, raw)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
    except BadRequest as e:
        address = client_address(request)
        more = _bad_bodies.admit("bad Label Studio body", address)
        if more is not None:
            log.warning("refused a %s body from %s: %s%s", request.url.path, address or "an unknown address",
                        str(e)[:200], more)
        raise
    return body


async def _answer(request: Request, method: Callable[[Caller, Mapping[str, Any]], dict[str, Any]]) -> Response:
    """Parse the body, then run ``method`` in the threadpool (its gRPC calls block); a BadRequest is 400, a
    body that is not ``application/json`` 415 and an unreadable Authorization header 401 (JSON, like the
    app's other APIs)."""
    try:
        token = request_token(request)
        if request.app.state.config.tokens_required and not token:  # as every other route (auth.caller)
            raise Unauthorized(NO_TOKEN)
        if not request.app.state.config.tokens_required:
            # as auth.caller for every other route: HttpError 429 while the address has used up its failed tries
            # (the TokenFirstGuard has applied it already while the agent requires tokens; applied twice, the
            # token's second-try check would be taken by the first and refused by the second)
            unknown_token_throttled(request, token)
        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(lambda: method(_caller(request, token), body)))
    except BadRequest as e:
        return error_response(request, 400, "BAD_REQUEST", str(e))
    except NotJson as e:
        return error_response(request, 415, "UNSUPPORTED_MEDIA_TYPE", str(e))
    except Unauthorized as e:
        return error_response(request, 401, "UNAUTHENTICATED", str(e), {"WWW-Authenticate": 'Basic realm="shortlist"'})


@router.get("/health")
@router.get("/")
async def health(request: Request) -> Response:
    """UP when the agent answers, from its standard gRPC health service (no token needed); 503 when it cannot
    be reached. The request's token, if any, is never sent: /health answers UP for any token (a token's
    problems show at /setup), and checking it here, outside the unknown-token throttle, made a right token
    "known" (``KnownTokens``), so that a throttled route then answered 200 for a right guess and 429 for a
    wrong one: a token oracle at 76 guesses a second (the security review; docs/app.md, "Auth")."""
    status, answer = await run_in_threadpool(lambda: _reachable(request))
    return JSONResponse(answer, status_code=status)


def _reachable(request: Request) -> tuple[int, dict[str, Any]]:
    """/health's answer from the agent's standard gRPC health service (no token needed)."""
    state = request.app.state
    state.stub()  # the shared channel, made on first use
    try:
        health_pb2_grpc.HealthStub(state.stub.channel).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=state.config.rpc_timeout_s)
    except grpc.RpcError as e:
        if _code(e) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return 503, {"status": "DOWN", "model_class": MODEL_CLASS, "message": _details(e)}
    return 200, {"status": "UP", "model_class": MODEL_CLASS}


@router.post("/setup")
async def setup_project(request: Request) -> Response:
    return await _answer(request, request.app.state.labelstudio.setup)


@router.post("/predict")
async def predict(request: Request) -> Response:
    return await _answer(request, request.app.state.labelstudio.predict)


@router.post("/webhook")
async def webhook(request: Request) -> Response:
    return await _answer(request, request.app.state.labelstudio.webhook)


MODULE = WebModule(router, setup=setup)
