"""The serving graph on Ray Serve: Ingress → Preprocessor → LLMServer → Postprocessor.

`build_app` is what `serve run` imports; `run` starts the graph from a config; the request models are the
OpenAI-compatible API. Names are imported on first use.
"""

from raygen._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "ServeConfig": "raygen.serve.config",
    "APP_NAME": "raygen.serve.app",
    "AppArgs": "raygen.serve.app",
    "build_app": "raygen.serve.app",
    "build_graph": "raygen.serve.app",
    "run": "raygen.serve.app",
    "CompletionRequest": "raygen.serve.protocol",
    "ChatCompletionRequest": "raygen.serve.protocol",
    "ChatMessage": "raygen.serve.protocol",
    "RequestError": "raygen.errors",
})
