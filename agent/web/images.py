"""Images for the pages: ``/thumb/{id}?size=N`` (a cached thumbnail from GetImages) and ``/image/{id}``
(the stored image). The pages build these URLs with ``agent.web.pages.image_url`` (and app.js
``Shortlist.imageUrl``, the same rule). Both carry an ETag from the payload's sha256 (a sample's payload
never changes) and ``Cache-Control: private`` (the answer depends on the caller's token), and answer 304 to a matching
``If-None-Match``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from agent.web.auth import Caller, CallerDep
from agent.web.errors import HttpError
from agent.web.module import WebModule
from shortlist.v1 import agent_pb2

router = APIRouter()
MAX_AGE_S = 24 * 3600
FORMATS = ("jpeg", "webp")


def _sample_id(path_id: str, query_id: str | None) -> str:
    """The id of a request: the path's, or the ``id`` parameter's (image_url's form for "." and "..")."""
    if not path_id and query_id is not None:
        return query_id
    return path_id


def image_response(request: Request, caller: Caller, sample_id: str, max_side: int, fmt: str) -> Response:
    reply = caller(caller.stub.GetImages, agent_pb2.GetImagesRequest(ids=[sample_id], max_side=max_side, format=fmt))
    img = reply.images[0]
    if img.error:
        raise HttpError(409, "FAILED_PRECONDITION", img.error)
    etag = f'"{img.sha256[:32]}-{max_side}-{fmt}"'
    headers = {"ETag": etag, "Cache-Control": f"private, max-age={MAX_AGE_S}"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(img.data, media_type=img.mime_type, headers=headers)


@router.get("/thumb/{sample_id:path}")
def thumb(request: Request, sample_id: str, size: int = Query(0), format: str = Query("jpeg"),
          id: str | None = Query(None), caller: Caller = CallerDep) -> Response:
    """A thumbnail (``size``: longer side in pixels, default the app's grid size; the agent checks the range)."""
    return image_response(request, caller, _sample_id(sample_id, id), size or caller.config.thumb_side, format)


@router.get("/image/{sample_id:path}")
def image(request: Request, sample_id: str, id: str | None = Query(None), caller: Caller = CallerDep) -> Response:
    """The image as stored (full size)."""
    return image_response(request, caller, _sample_id(sample_id, id), 0, "")


MODULE = WebModule(router)
