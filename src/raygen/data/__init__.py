"""Data curation as streaming Ray Data stages: collect → clean → dedup → label → features.

Names are imported on first use.
"""

from raygen._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "DataConfig": "raygen.data.config",
    "FeaturesConfig": "raygen.data.config",
    "DataStats": "raygen.data.pipeline",
    "prepare_data": "raygen.data.pipeline",
    "load_stats": "raygen.data.pipeline",
    "export_for_labeling": "raygen.data.pipeline",
    "import_labels": "raygen.data.pipeline",
    "QualityRules": "raygen.data.quality",
    "train_tokenizer": "raygen.data.features",
    "DataError": "raygen.errors",
})
