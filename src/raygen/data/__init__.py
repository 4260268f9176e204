"""Data curation as streaming Ray Data stages: collect → clean → dedup → features."""
