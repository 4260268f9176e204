"""The pydantic base of every component config: unknown keys are refused, assignments are validated.

A leaf module (it imports nothing of raygen), so each package's config.py uses it without importing
raygen/config.py, which composes them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
