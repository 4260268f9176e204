"""Model development: build a causal LM, train it with Ray Train + DeepSpeed ZeRO, export it."""
