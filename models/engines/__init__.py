"""Inference engines.  `build_engine` picks one from `ENGINE`; `build_engines` makes one per chat model this
worker serves (`CHAT_MODELS` / `WORKER_MODELS`, models/routing.py).  Heavy libraries load only when chosen."""

from __future__ import annotations

from .. import routing
from ..settings import Settings
from .base import ChatMessage, Engine, EngineError, GenParams, ImageInput, VisionUnsupported

__all__ = [
    "ChatMessage",
    "Engine",
    "EngineError",
    "GenParams",
    "ImageInput",
    "VisionUnsupported",
    "build_engine",
    "build_engines",
    "settings_for",
]


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

        return TestEngine(
            token_delay=settings.test_engine_token_delay, model=settings.chat_model if settings.chat_models else ""
        )
    raise ValueError(f"unknown ENGINE {settings.engine!r}")


def settings_for(settings: Settings, spec: routing.ModelSpec) -> Settings:
    """The worker's settings with what `spec` says serves its model (a bare name keeps them as they are;
    the test engine then still learns the name, so a test can tell which model answered)."""
    if not spec.engine:
        return settings.model_copy(update={"chat_model": spec.name}) if settings.engine == "test" else settings
    update: dict[str, object] = {"engine": spec.engine}
    if spec.engine == "openai":
        update["chat_model"] = spec.name
        if spec.target:
            update["openai_base_url"] = spec.target
    elif spec.engine == "lmdeploy":
        update["lmdeploy_model"] = spec.target or spec.name
    elif spec.engine == "llamacpp":
        update.update(llamacpp_model=spec.target, llamacpp_model_path="")
    elif spec.engine == "test":
        update["chat_model"] = spec.name
    return settings.model_copy(update=update)


def build_engines(settings: Settings) -> dict[str, Engine]:
    """Route (the model name jobs carry, "" when not routed) → engine, for every model this worker serves, in
    `CHAT_MODELS` order.  Raises `routing.ModelListError` when `WORKER_MODELS` names a model not configured,
    or `ValueError` when this worker serves none (a worker that claims nothing must not look alive)."""
    specs = routing.worker_models(settings)
    if not specs:
        raise ValueError(
            f"this worker serves none of CHAT_MODELS: set WORKER_MODELS to some of {', '.join(routing.names(settings))}"
        )
    return {routing.route(settings, spec): build_engine(settings_for(settings, spec)) for spec in specs}
