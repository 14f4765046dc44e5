"""Images billed per image: Imagen's ``:predict`` (Gemini API and Vertex AI).

The answer (https://ai.google.dev/api/models#method:-models.predict, and the Imagen guide's REST example) is
``{"predictions": [{"bytesBase64Encoded": "…", "mimeType": "image/png"}, …]}``: one prediction per generated
image; an image withheld by the safety filters is a prediction with ``raiFilteredReason`` and no bytes, and is
not billed. Each image is megabytes of base64, so the body is never kept: the meter counts
``"bytesBase64Encoded"`` keys as the bytes pass (a key split across two chunks is found: the last bytes of each
chunk are carried over). The count is the ``output_images`` unit, which genai-prices does not have: its price
comes from the override file (README, "Pricing"), and a model without one is ``unpriced``, never $0.
(tests/test_other_units.py::test_imagen_is_priced_per_generated_image)
"""

from __future__ import annotations

from ..usage import Usage
from .base import MeterResult, RequestInfo
from .batches import FreeMeter

_KEY = b'"bytesBase64Encoded"'


class ImageCountMeter(FreeMeter):
    __slots__ = ("_carry", "_images")

    def __init__(self, info: RequestInfo, status: int) -> None:
        super().__init__(info, status)
        self._images = 0
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        if self.status >= 400:
            return super().feed(chunk)
        data = self._carry + chunk if self._carry else chunk
        self._images += data.count(_KEY)
        # What could be the start of a key cut by the chunk's end (never a whole key: it was counted).
        self._carry = data[-(len(_KEY) - 1) :]
        return None

    def finish(self, complete: bool) -> MeterResult:
        if self.status >= 400:
            return self.error_result(self.info.model)
        if not complete:
            return MeterResult(model=self.info.model, usage_source="partial", error="truncated")
        usage = Usage(details={"output_images": self._images})
        return MeterResult(model=self.info.model, usage=usage, usage_source="response", zero_cost=not self._images)
