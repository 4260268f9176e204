"""raygen: the generative-AI lifecycle on Ray. Public API below; everything else may change.

Importing raygen does not import Ray, torch or transformers: stages import what they use.
"""

from raygen.config import RaygenConfig, load_config
from raygen.errors import ConfigError, DataError, RaygenError, RegistryError, RequestError, TrainingError
from raygen.registry import Registry

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DataError", "RaygenConfig", "RaygenError", "Registry", "RegistryError", "RequestError",
    "TrainingError", "load_config", "__version__",
]
