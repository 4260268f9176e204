"""The serving graph on Ray Serve: Ingress → Preprocessor → LLMServer → Postprocessor."""
