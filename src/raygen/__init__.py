"""raygen: the generative-AI lifecycle on Ray. Public API below; everything else may change.

Importing raygen imports nothing heavy (not Ray, torch, transformers, nor pydantic): each name is imported
on first use, so the engine runs where only torch and transformers are installed.
"""

from raygen._lazy import exports

__version__ = "0.1.0"

_all, __getattr__, __dir__ = exports(__name__, {
    "RaygenConfig": "raygen.config",
    "load_config": "raygen.config",
    "Registry": "raygen.registry",
    "Location": "raygen.storage",
    **{name: "raygen.errors" for name in ("ConfigError", "DataError", "EngineError", "RaygenError",
                                          "RegistryError", "RequestError", "StorageError",
                                          "TrainingError")},
})
__all__ = [*_all, "__version__"]
