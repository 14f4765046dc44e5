"""Azure OpenAI: ``/openai/deployments/{deployment}/...?api-version=`` and the ``/openai/v1/...`` API.

One resource (``MODELTRACK_AZURE_BASE_URL``) is served under ``/azure/...``; several
(``MODELTRACK_AZURE_RESOURCES=east=https://acme-east.openai.azure.com,west=…``) under ``/azure/{name}/...``,
each with its own upstream pool: the name picks among configured origins only, so no request can name a host
(tests/test_azure_resources.py).

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
        resources: dict[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, inject_stream_usage)
        self.deployments = deployments or {}
        self.resources = {k: v.rstrip("/") for k, v in (resources or {}).items()}
        self.multi_origin = bool(self.resources)

    def origins(self) -> dict[str, str]:
        out = super().origins()
        out.update({f"azure:{name}": url for name, url in self.resources.items()})
        return out

    def locate(self, path: str) -> tuple[str, str] | None:
        """``/{resource}/openai/...`` → that resource's pool and ``/openai/...``; without a resource name, the
        single ``MODELTRACK_AZURE_BASE_URL`` when there is one."""
        name, _, rest = path[1:].partition("/")
        if name in self.resources:
            return f"azure:{name}", "/" + rest
        if self.base_url and name == "openai":  # /azure/openai/...: the single resource, as before
            return "azure", path
        return None  # a name nobody configured (a typo must not reach another resource)

    def refusal(self, path: str) -> str:
        names = ", ".join(sorted(self.resources))
        return f"No such Azure resource here: write /azure/RESOURCE/openai/..., RESOURCE one of {names}."

    def request_info(self, method: str, path: str, query: str, body: Any) -> RequestInfo:
        info = super().request_info(method, path, query, body)
        marker = "/deployments/"
        i = path.find(marker)
        if i >= 0:
            deployment = path[i + len(marker) :].split("/", 1)[0]
            info.extra["deployment"] = deployment
            info.model = self.deployments.get(deployment, info.model or deployment)
        return info
