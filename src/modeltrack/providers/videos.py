"""OpenAI video generation (Sora: ``/v1/videos``), billed per second of video when a job completes.

A video is an async job (API reference, "Videos"; the openai SDK's ``types/video.py``): ``POST /v1/videos``
(and ``…/remix``, ``/extensions``, ``/edits``) answers a video object ``{"id", "object": "video", "model",
"status": "queued", "seconds", "size", …}``; ``GET /v1/videos/{id}`` is polled until ``status`` is
``completed`` (or ``failed``); ``GET /v1/videos/{id}/content`` downloads it. OpenAI bills the seconds of a
completed video at the model's per-second price for its size (sora-2-pro's larger sizes cost more).

Metering, with the batch registry (:mod:`modeltrack.batches`) as for Batch API jobs:

* the answer that created a job remembers its creator's attribution (a job is its creator's spend, whoever polls);
* the first poll that reads ``completed`` bills the video once: ``seconds`` in the ``output_video_seconds`` unit,
  its ``size`` as the price variant; the event's id is the job's (a retry or a racing poll stores nothing twice)
  and the job is remembered as priced, so later polls bill nothing;
* creations, other polls, lists, deletions and downloads are free (``cost_source: zero``); a failed job costs
  nothing.

genai-prices has no Sora prices: they come from the override file (README, "Pricing"); without one a completed
video is ``unpriced``, never $0. (tests/test_other_units.py::test_a_sora_video_is_billed_once_when_it_completes)
"""

from __future__ import annotations

from typing import Any

from ..usage import Usage, as_int
from .base import MeterResult, RequestInfo, error_code
from .batches import BatchNote
from .meters import JSONBodyMeter


class VideoMeter(JSONBodyMeter):
    def __init__(self, info: RequestInfo, status: int) -> None:
        super().__init__(info, status)

    def from_json(self, obj: Any) -> MeterResult:
        if not isinstance(obj, dict) or obj.get("object") != "video" or not isinstance(obj.get("id"), str):
            if isinstance(obj, dict) and obj.get("error"):
                return MeterResult(model=self.info.model, error=error_code(obj["error"]))
            return MeterResult(model=self.info.model, usage=Usage(), usage_source="none", zero_cost=True)
        vid: str = obj["id"]
        model = obj.get("model") if isinstance(obj.get("model"), str) else self.info.model
        created = self.info.method == "POST"
        note = [BatchNote(vid, "/v1/videos", (), created)]
        job = self.info.extra.get("batch")
        if obj.get("status") == "completed" and not created and not (job is not None and job["priced"]):
            seconds = as_int(obj.get("seconds"))
            size = obj.get("size")
            return MeterResult(
                model=model,
                usage=Usage(details={"output_video_seconds": seconds}),
                usage_source="response",
                batch=note,
                variant=(("size", size),) if isinstance(size, str) else (),
                settles=vid,
            )
        err = obj.get("error")
        return MeterResult(
            model=model,
            usage=Usage(),
            usage_source="none",
            zero_cost=True,
            batch=note,
            error=error_code(err) if err and obj.get("status") == "failed" else None,
        )


def veo_request(info: RequestInfo, method: str, body: Any) -> None:
    """What a Veo call on Vertex AI says (Vertex AI's Veo API reference: ``models/{m}:predictLongRunning`` with
    ``{"instances": […], "parameters": {"durationSeconds", "sampleCount", "resolution", …}}`` answers an operation
    ``{"name": "…/operations/{id}"}``; ``models/{m}:fetchPredictOperation`` with ``{"operationName"}`` polls it).
    The seconds are in the creation's parameters only: they are remembered with the job (modeltrack.batches)."""
    if method == "predictLongRunning":
        params = body.get("parameters") if isinstance(body, dict) else None
        params = params if isinstance(params, dict) else {}
        seconds = params.get("durationSeconds", VEO_DEFAULT_SECONDS)
        resolution = params.get("resolution")
        info.extra["veo"] = {
            "create": True,
            "seconds": seconds if isinstance(seconds, int) and not isinstance(seconds, bool) else None,
            "resolution": resolution if isinstance(resolution, str) else None,
        }
        return
    info.extra["veo"] = {"create": False}
    name = body.get("operationName") if isinstance(body, dict) else None
    if isinstance(name, str) and name:
        info.extra["batch_results"] = name  # the registry is asked for the job before the poll goes out


VEO_DEFAULT_SECONDS = 8
"""Vertex AI's Veo reference: ``durationSeconds`` defaults to 8 for Veo 3 (what a creation without one bills)."""


class VeoMeter(JSONBodyMeter):
    """Veo on Vertex AI: the creation remembers the job's seconds per video and its creator; the first poll that
    reads it ``done`` bills ``seconds × videos`` (``response.videos``, each with ``bytesBase64Encoded`` or
    ``gcsUri``; ``raiMediaFilteredCount`` ones are not delivered and not counted) once, under the job's own event
    id, with ``resolution`` as the price variant. A job whose creation was not seen has no known length: its
    completion is recorded ``unpriced``, never guessed. Answers up to 64 MB are read (videos returned inline)."""

    def from_json(self, obj: Any) -> MeterResult:
        veo = self.info.extra.get("veo") or {}
        model = self.info.model
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            err = obj.get("error") if isinstance(obj, dict) else None
            return MeterResult(model=model, error=error_code(err) if err else "unexpected_json")
        name: str = obj["name"]
        if veo.get("create"):
            meta = {"seconds": veo.get("seconds"), "resolution": veo.get("resolution")}
            note = [BatchNote(name, ":predictLongRunning", (), True, meta)]
            return MeterResult(model=model, usage=Usage(), usage_source="none", zero_cost=True, batch=note)
        free = MeterResult(model=model, usage=Usage(), usage_source="none", zero_cost=True)
        job = self.info.extra.get("batch")
        if not obj.get("done") or (job is not None and job["priced"]):
            return free
        if obj.get("error"):
            free.error = error_code(obj["error"])
            return free
        response = obj.get("response")
        listed = response.get("videos") if isinstance(response, dict) else None
        videos: list[Any] = listed if isinstance(listed, list) else []
        count = len([v for v in videos if isinstance(v, dict) and (v.get("bytesBase64Encoded") or v.get("gcsUri"))])
        meta = (job or {}).get("meta") or {}
        seconds = meta.get("seconds")
        if not isinstance(seconds, int):
            return MeterResult(model=model, usage_source="missing", error="video_length_unknown", settles=name)
        resolution = meta.get("resolution")
        return MeterResult(
            model=model,
            usage=Usage(details={"output_video_seconds": seconds * count}),
            usage_source="response",
            zero_cost=count == 0,
            variant=(("resolution", resolution),) if isinstance(resolution, str) else (),
            settles=name,
        )
