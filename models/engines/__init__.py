"""Inference engines.  `build_engine` picks one from `ENGINE`; heavy libraries load only when chosen."""

from __future__ import annotations

from ..settings import Settings
from .base import ChatMessage, Engine, EngineError, GenParams, ImageInput, VisionUnsupported

__all__ = ["ChatMessage", "Engine", "EngineError", "GenParams", "ImageInput", "VisionUnsupported",
           "build_engine"]


def build_engine(settings: Settings) -> Engine:
    if settings.engine == "llamacpp":
        from .llamacpp import LlamaCppEngine

        return LlamaCppEngine.from_settings(settings)
    if settings.engine == "openai":
        from .openai import OpenAIEngine

        return OpenAIEngine.from_settings(settings)
    if settings.engine == "lmdeploy":
        from .lmdeploy import LMDeployEngine

        return LMDeployEngine.from_settings(settings)
    if settings.engine == "test":
        from .testing import TestEngine

        return TestEngine(token_delay=settings.test_engine_token_delay)
    raise ValueError(f"unknown ENGINE {settings.engine!r}")
