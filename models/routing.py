"""Which chat models the deployment offers (`CHAT_MODELS`), which ones this worker serves (`WORKER_MODELS`),
and which model a job asks for.

Why a module of its own: the bot (the `/model` choice, the "nobody serves it" reply), the handlers (the
model a job carries) and the worker (one engine per model it serves) must read the list the same way.

`CHAT_MODELS` is a comma-separated list; each entry is `NAME` or `NAME=SPEC`:

* `NAME` alone — served by the worker's own `ENGINE` settings as they are (the name is a label);
* `NAME=openai:URL` — an OpenAI-compatible server at URL (lmdeploy `api_server`, vLLM, ...), asked for
  the model NAME; `NAME=openai` uses `OPENAI_BASE_URL`;
* `NAME=lmdeploy:MODEL` — lmdeploy in-process, MODEL a hub id or path (NAME itself when empty);
* `NAME=llamacpp:GGUF` — llama.cpp with that GGUF (a path or a hub reference, as `LLAMACPP_MODEL`);
* `NAME=test` — the deterministic test engine.

The first entry is the default.  With fewer than two entries nothing changes: jobs carry no model and go
on the one job stream (`KEYS.jobs`) as before.  With two or more, every job names its model and goes on
that model's stream (`KEYS.jobs_for(name)`), read only by workers that serve it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol


class Settings(Protocol):
    """The settings this module reads (models.settings.Settings has them; settings.py validates CHAT_MODELS
    with `parse_chat_models`, so this module does not import it back)."""

    chat_models: str
    worker_models: list[str]
    engine: str
    chat_model: str
    lmdeploy_model: str
    llamacpp_model: str
    llamacpp_model_path: str


ENGINES = ("openai", "lmdeploy", "llamacpp", "test")
# Names become part of a Redis key and are shown in Discord: hub-style ids (internlm/internlm3-8b-instruct)
# and served names (qwen2.5:7b) must fit, separators of the list (`,` `=`) and whitespace must not.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,99}$")


class ModelListError(ValueError):
    """`CHAT_MODELS` or `WORKER_MODELS` cannot be read; the message names the entry."""


@dataclass(frozen=True)
class ModelSpec:
    """One entry of `CHAT_MODELS`: its name and, optionally, what serves it."""

    name: str
    engine: str = ""  # "" = the worker's own ENGINE settings
    target: str = ""  # the URL (openai), model id/path (lmdeploy) or GGUF (llamacpp)

    def describe(self) -> str:
        if not self.engine:
            return self.name
        return f"{self.name} ({self.engine}{' ' + public_target(self.target) if self.target else ''})"


def public_target(target: str) -> str:
    """A target fit to show: a URL loses its userinfo and path (they may hold a key)."""
    if "://" in target:
        scheme, rest = target.split("://", 1)
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        return f"{scheme}://{host}"
    return target


def valid_name(name: str) -> bool:
    return bool(NAME.match(name))


def parse_chat_models(text: str) -> list[ModelSpec]:
    """`CHAT_MODELS` as specs, in order; raises `ModelListError` naming a bad or repeated entry."""
    return list(_parse(text or ""))


@lru_cache(maxsize=32)
def _parse(text: str) -> tuple[ModelSpec, ...]:  # read on every request: parse each distinct list once
    specs: list[ModelSpec] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, has_spec, spec = entry.partition("=")
        name = name.strip()
        if not valid_name(name):
            raise ModelListError(
                f"{name!r} is not a model name (letters, digits and . _ : / + - only, at most 100 characters)"
            )
        engine, target = "", ""
        if has_spec:
            engine, _, target = spec.strip().partition(":")
            engine, target = engine.strip().lower(), target.strip()
            if engine not in ENGINES:
                raise ModelListError(
                    f"{entry!r}: what serves a model is one of {', '.join(ENGINES)} "
                    "(for example internlm3=openai:http://host:23333/v1)"
                )
            if engine == "llamacpp" and not target:
                raise ModelListError(f"{entry!r}: llamacpp needs the GGUF, e.g. {name}=llamacpp:/models/x.gguf")
        if any(s.name == name for s in specs):
            raise ModelListError(f"{name!r} is listed twice")
        specs.append(ModelSpec(name, engine, target))
    return tuple(specs)


def configured(settings: Settings) -> list[ModelSpec]:
    """The deployment's models (`CHAT_MODELS`), the default first; empty = the one unnamed model."""
    return parse_chat_models(settings.chat_models)


def names(settings: Settings) -> list[str]:
    return [spec.name for spec in configured(settings)]


def routed(settings: Settings) -> bool:
    """Whether jobs carry a model (two or more are configured); with one, nothing changes."""
    return len(configured(settings)) >= 2


def default_model(settings: Settings) -> str:
    """The model a job asks for when no admin chose one: the first configured, "" when not routed."""
    specs = configured(settings)
    return specs[0].name if len(specs) >= 2 else ""


def job_model(settings: Settings, chosen: str | None) -> str:
    """The model a job carries: the admins' choice when it is still configured, else the default; "" when
    the deployment has one model (a choice made under an older CHAT_MODELS is ignored, not an error)."""
    if not routed(settings):
        return ""
    return chosen if chosen and chosen in names(settings) else default_model(settings)


def single_model_name(settings: Settings) -> str:
    """What to call the only model of a single-model deployment (for `/model`)."""
    specs = configured(settings)
    if specs:
        return specs[0].name
    if settings.engine == "openai":
        return settings.chat_model
    if settings.engine == "lmdeploy":
        return settings.lmdeploy_model
    if settings.engine == "llamacpp":
        return settings.llamacpp_model or settings.llamacpp_model_path or "InternLM2.5-1.8B-Chat (default)"
    return settings.engine


def worker_models(settings: Settings) -> list[ModelSpec]:
    """The models this worker serves, each with what serves it.

    Not routed: the one model (the only `CHAT_MODELS` entry, or an unnamed one: the worker's ENGINE); its
    jobs are on the one job stream (`route` gives ""). Routed: `WORKER_MODELS` (names from `CHAT_MODELS`);
    empty = every model whose entry says what serves it, plus the default when it is a bare name (the
    worker's own ENGINE)."""
    specs = configured(settings)
    if len(specs) < 2:
        return [specs[0] if specs else ModelSpec("")]
    by_name = {spec.name: spec for spec in specs}
    wanted = [name for name in settings.worker_models if name]
    if not wanted:
        chosen = [spec for spec in specs if spec.engine]
        if not specs[0].engine:
            chosen.insert(0, specs[0])
        return chosen
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ModelListError(
            f"WORKER_MODELS names {', '.join(unknown)}, which CHAT_MODELS does not list ({', '.join(by_name)})"
        )
    return [by_name[name] for name in dict.fromkeys(wanted)]


def route(settings: Settings, spec: ModelSpec) -> str:
    """The model name its jobs carry (and whose stream they are on): "" when the deployment is not routed."""
    return spec.name if routed(settings) else ""
