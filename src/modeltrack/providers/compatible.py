"""OpenAI-compatible providers: same wire format, different upstream and a few usage quirks.

The quirks live in ``openai.openai_usage`` (DeepSeek ``prompt_cache_hit_tokens``, Groq ``x_groq.usage``,
OpenRouter ``usage.cost``) so that there is one mapping. Here we only declare the upstreams and which of them
accept ``stream_options.include_usage`` (Mistral's API rejects unknown fields, and always sends usage anyway).
"""

from __future__ import annotations

from .openai import OpenAI


def _compatible(name: str, base_url: str, inject: bool) -> type[OpenAI]:
    return type(
        name.capitalize(),
        (OpenAI,),
        {"name": name, "default_base_url": base_url, "inject_stream_usage_default": inject, "__doc__": None},
    )


COMPATIBLE: dict[str, type[OpenAI]] = {
    name: _compatible(name, url, inject)
    for name, url, inject in (
        ("groq", "https://api.groq.com/openai", True),
        ("mistral", "https://api.mistral.ai", False),
        ("deepseek", "https://api.deepseek.com", True),
        ("xai", "https://api.x.ai", True),
        ("openrouter", "https://openrouter.ai/api", True),
        ("together", "https://api.together.xyz", True),
        ("fireworks", "https://api.fireworks.ai/inference", True),
        ("local", "http://127.0.0.1:11434", True),  # vLLM / Ollama / llama.cpp style servers
    )
}
