"""raygen's inference engine: continuous batching over a paged, prefix-cached KV cache.

Pure torch and Python, no Ray import anywhere under engine/ (the GPU image has no Ray). The names below are
the public surface; each is imported on first use, so importing this package imports nothing heavy.
"""

from raygen._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "LLMEngine": "raygen.engine.engine",
    "AsyncLLMEngine": "raygen.engine.engine",
    "EngineConfig": "raygen.engine.config",
    "EngineStats": "raygen.engine.engine",
    "SamplingParams": "raygen.engine.request",
    "RequestOutput": "raygen.engine.request",
    "TokenLogprob": "raygen.engine.request",
    "GrammarSpec": "raygen.engine.request",
    "Grammars": "raygen.engine.structured",
    "GrammarError": "raygen.errors",
    "EngineError": "raygen.errors",
    "EngineSetupError": "raygen.errors",
    "UnsupportedModelError": "raygen.errors",
    "InvalidPromptError": "raygen.errors",
    "PromptTooLongError": "raygen.errors",
    "EngineOverloadedError": "raygen.errors",
    "EngineClosedError": "raygen.errors",
})
