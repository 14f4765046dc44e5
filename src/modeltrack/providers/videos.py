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
