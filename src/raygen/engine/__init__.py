"""raygen's inference engine: continuous batching over a paged, prefix-cached KV cache.

Pure torch and Python, no Ray import anywhere under engine/ (the GPU image has no Ray). Import what you
use: `raygen.engine.engine` (LLMEngine, AsyncLLMEngine, EngineConfig), `raygen.engine.request`
(SamplingParams, RequestOutput). Importing this package imports nothing heavy.
"""
