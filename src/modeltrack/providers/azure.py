"""Azure OpenAI: ``/openai/deployments/{deployment}/...?api-version=`` and the ``/openai/v1/...`` API.

The deployment name is not a model name. The response names the model (``gpt-4o-2024-11-20``), which is what
we price; when it does not (errors, cut streams), ``MODELTRACK_AZURE_DEPLOYMENTS`` maps deployment → model,
and failing that the deployment name itself is used (and will show up as unpriced, never as zero).
"""

from __future__ import annotations

from typing import Any

from .base import RequestInfo
from .openai import OpenAI


class Azure(OpenAI):
    name = "azure"
    default_base_url = ""  # per-resource: https://RESOURCE.openai.azure.com
    inject_stream_usage_default = False  # older api-versions reject stream_options

    def __init__(
        self,
        base_url: str | None = None,
        inject_stream_usage: bool | None = None,
        deployments: dict[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, inject_stream_usage)
        self.deployments = deployments or {}

    def request_info(self, method: str, path: str, query: str, body: Any) -> RequestInfo:
        info = super().request_info(method, path, query, body)
        marker = "/deployments/"
        i = path.find(marker)
        if i >= 0:
            deployment = path[i + len(marker) :].split("/", 1)[0]
            info.extra["deployment"] = deployment
            info.model = self.deployments.get(deployment, info.model or deployment)
        return info
