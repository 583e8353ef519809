"""Recognise the LLM provider, API, model and stream flag of a request from its upstream URL.

Kong proxies to the Service's host, so the provider is recognised from that host and
from the upstream path. The ``provider`` plugin setting replaces that detection. Some
providers put the model (Azure deployments, Gemini, Vertex, Bedrock, Hugging Face
serverless) or the stream flag (Gemini, Bedrock, TGI) in the URL instead of the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

# Provider label values, as Kong's ai-proxy names them where it has the provider.
OPENAI = "openai"
AZURE = "azure"
ANTHROPIC = "anthropic"
COHERE = "cohere"
MISTRAL = "mistral"
GEMINI = "gemini"
BEDROCK = "bedrock"
HUGGINGFACE = "huggingface"
OLLAMA = "ollama"
LLAMA_CPP = "llama_cpp"
OPENAI_COMPATIBLE = "openai_compatible"

PROVIDERS = (
    OPENAI,
    AZURE,
    ANTHROPIC,
    COHERE,
    MISTRAL,
    GEMINI,
    BEDROCK,
    HUGGINGFACE,
    OLLAMA,
    LLAMA_CPP,
    OPENAI_COMPATIBLE,
)


@dataclass(frozen=True)
class Route:
    """Provider, API, model and stream flag that an upstream URL identifies."""

    provider: str
    api: str
    model: str | None = None
    stream: bool | None = None


# Each entry: provider, API name, path pattern. The first match wins, so specific
# patterns come before generic ones. Patterns use `search`, so a prefix such as a
# gateway path in front of `/v1/...` still matches.
_AZURE_PATH = re.compile(r"/openai/deployments/(?P<model>[^/]+)/(?P<op>chat/completions|completions|embeddings)/?$")
_OPENAI_PATHS = (
    ("chat", re.compile(r"/chat/completions/?$")),
    ("completions", re.compile(r"/(?:fim/)?completions/?$")),
    ("embeddings", re.compile(r"/embeddings/?$")),
    ("responses", re.compile(r"/responses/?$")),
)
_ANTHROPIC_PATH = re.compile(r"/v1/messages/?$")
_ANTHROPIC_VERTEX_PATH = re.compile(
    r"/publishers/anthropic/models/(?P<model>[^/:]+):(?P<op>rawPredict|streamRawPredict)$"
)
_GEMINI_PATH = re.compile(r"/models/(?P<model>[^/:]+):(?P<op>[A-Za-z]+)$")
# Clients send ARN model ids with "/" encoded as %2F; an ARN whose "/" arrives decoded
# still names the model, so ARNs may span several path segments.
_BEDROCK_PATH = re.compile(
    r"/model/(?P<model>arn:.+?|[^/]+)/(?P<op>converse|converse-stream|invoke|invoke-with-response-stream)$"
)
_COHERE_PATH = re.compile(r"/(?P<version>v1|v2)/(?P<op>chat|generate|embed)/?$")
_OLLAMA_PATH = re.compile(r"/api/(?P<op>chat|generate|embed|embeddings)/?$")
_TGI_PATH = re.compile(r"/(?P<op>generate|generate_stream)/?$")
_HF_SERVERLESS_PATH = re.compile(r"^/models/(?P<model>[^/]+/[^/]+?)(?P<rest>/v1/chat/completions)?/?$")
_LLAMA_CPP_PATH = re.compile(r"/(?P<op>completion|embedding)/?$")

_STREAM_OPERATIONS = {"streamGenerateContent", "streamRawPredict", "converse-stream", "invoke-with-response-stream", "generate_stream"}


def detect(host: str, path: str, provider_override: str | None = None) -> Route | None:
    """Return the route for an upstream ``host`` and ``path``, or None when it is not LLM traffic.

    ``path`` may carry a query string; it is ignored.
    """
    path = path.split("?", 1)[0]
    host = host.lower()
    provider = provider_override or _provider_from_host(host, path)
    if provider is None:
        return None
    return _route_for(provider, host, path)


def url_stream(path: str) -> bool | None:
    """Return the stream flag that the path alone decides, or None when the body decides.

    Used in the access phase, before the Service host is known: only path shapes
    that belong to a single provider are considered, and a ``stream=true`` query
    parameter (OpenAI's and Azure's retrieval of a background response).
    """
    path, _, query = path.partition("?")
    if query and "stream=true" in query.split("&"):
        return True
    for pattern in (_GEMINI_PATH, _ANTHROPIC_VERTEX_PATH, _BEDROCK_PATH):
        match = pattern.search(path)
        if match:
            return match.group("op") in _STREAM_OPERATIONS
    match = _TGI_PATH.search(path)
    # Ollama's /api/generate and Cohere's /v1/generate take the flag from the body.
    if match and not path.endswith("/api/generate") and not _COHERE_PATH.search(path):
        return match.group("op") == "generate_stream"
    return None


def streams_by_default(path: str) -> bool:
    """Return True for an API that streams when the request body does not set ``stream``.

    Ollama's native chat and generate endpoints stream unless told ``"stream": false``.
    """
    match = _OLLAMA_PATH.search(path.split("?", 1)[0])
    return bool(match and match.group("op") in ("chat", "generate"))


def body_flag_provider(host: str) -> str | None:
    """Return the provider at ``host`` when every API there takes the stream flag from the body.

    Only the public hosts of OpenAI, Azure OpenAI, Anthropic, Cohere and Mistral
    qualify, where a body without ``stream`` requests a non-streamed response. Anthropic on
    Vertex, Gemini, Bedrock, TGI and Ollama may stream by the URL or by default, so
    their hosts return None, as do unknown hosts.
    """
    provider = _provider_from_host(host.lower(), "")
    return provider if provider in (OPENAI, AZURE, ANTHROPIC, COHERE, MISTRAL) else None


def _provider_from_host(host: str, path: str) -> str | None:
    if host == "api.openai.com":
        return OPENAI
    if host.endswith(".openai.azure.com") or host.endswith(".cognitiveservices.azure.com"):
        return AZURE
    if host == "api.anthropic.com":
        return ANTHROPIC
    if host in ("api.cohere.com", "api.cohere.ai"):
        return COHERE
    if host == "api.mistral.ai":
        return MISTRAL
    if host == "generativelanguage.googleapis.com":
        return GEMINI
    if host.endswith("aiplatform.googleapis.com"):
        return ANTHROPIC if _ANTHROPIC_VERTEX_PATH.search(path) else GEMINI
    if host.startswith("bedrock-runtime.") and host.endswith(".amazonaws.com"):
        return BEDROCK
    if host.endswith("huggingface.co") or host.endswith(".endpoints.huggingface.cloud"):
        return HUGGINGFACE
    if _OLLAMA_PATH.search(path):
        return OLLAMA
    if _AZURE_PATH.search(path):
        return AZURE
    if _ANTHROPIC_PATH.search(path):
        return ANTHROPIC
    if _GEMINI_PATH.search(path) and ":" in path.rsplit("/", 1)[-1]:
        return GEMINI
    if _BEDROCK_PATH.search(path):
        return BEDROCK
    if any(pattern.search(path) for _, pattern in _OPENAI_PATHS):
        return OPENAI_COMPATIBLE
    if _TGI_PATH.search(path):
        return HUGGINGFACE
    if _LLAMA_CPP_PATH.search(path):
        return LLAMA_CPP
    return None


def _route_for(provider: str, host: str, path: str) -> Route:
    if provider == AZURE:
        match = _AZURE_PATH.search(path)
        if match:
            return Route(AZURE, _openai_api(match.group("op")), model=unquote(match.group("model")))
        return Route(AZURE, _openai_api_from_path(path))
    if provider == ANTHROPIC:
        match = _ANTHROPIC_VERTEX_PATH.search(path)
        if match:
            stream = match.group("op") == "streamRawPredict"
            return Route(ANTHROPIC, "messages", model=unquote(match.group("model")), stream=stream)
        return Route(ANTHROPIC, "messages")
    if provider == GEMINI:
        match = _GEMINI_PATH.search(path)
        if match:
            op = match.group("op")
            api = "embeddings" if op in ("embedContent", "batchEmbedContents") else "generate"
            return Route(GEMINI, api, model=unquote(match.group("model")), stream=op == "streamGenerateContent")
        return Route(GEMINI, "chat" if _OPENAI_PATHS[0][1].search(path) else "generate")
    if provider == BEDROCK:
        match = _BEDROCK_PATH.search(path)
        if match:
            op = match.group("op")
            api = "converse" if op.startswith("converse") else "invoke"
            return Route(BEDROCK, api, model=unquote(match.group("model")), stream=op in _STREAM_OPERATIONS)
        return Route(BEDROCK, "converse")
    if provider == COHERE:
        match = _COHERE_PATH.search(path)
        if match:
            return Route(COHERE, f"{match.group('version')}_{match.group('op')}")
        return Route(COHERE, "v2_chat")
    if provider == OLLAMA:
        match = _OLLAMA_PATH.search(path)
        if match:
            op = match.group("op")
            return Route(OLLAMA, "embeddings" if op.startswith("embed") else op)
        return Route(OLLAMA, _openai_api_from_path(path))
    if provider == HUGGINGFACE:
        return _huggingface_route(host, path)
    if provider == LLAMA_CPP:
        match = _LLAMA_CPP_PATH.search(path)
        if match:
            return Route(LLAMA_CPP, match.group("op"))
        return Route(LLAMA_CPP, _openai_api_from_path(path))
    return Route(provider, _openai_api_from_path(path))


def _huggingface_route(host: str, path: str) -> Route:
    match = _TGI_PATH.search(path)
    if match and not _OPENAI_PATHS[1][1].search(path):
        return Route(HUGGINGFACE, "tgi_generate", stream=match.group("op") == "generate_stream")
    serverless = _HF_SERVERLESS_PATH.search(path) if host.startswith("api-inference.") else None
    if serverless:
        api = "chat" if serverless.group("rest") else "tgi_generate"
        return Route(HUGGINGFACE, api, model=unquote(serverless.group("model")))
    return Route(HUGGINGFACE, _openai_api_from_path(path))


def _openai_api(operation: str) -> str:
    return {"chat/completions": "chat", "completions": "completions", "embeddings": "embeddings"}[operation]


def _openai_api_from_path(path: str) -> str:
    for api, pattern in _OPENAI_PATHS:
        if pattern.search(path):
            return api
    return "chat"
