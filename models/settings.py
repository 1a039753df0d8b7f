"""Typed settings, read from the environment and `.env`.

They live in `models/` because that is the bottom of the import flow (bot → handlers → models):
every layer, the bot and the worker process alike, reads the same object.  Every field here is
documented in `.env.example` and the README; `tests/test_settings.py` checks that they agree.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

INTERNLM_META_PROMPT = (
    "You are InternLM (书生·浦语), a helpful, honest, and harmless AI assistant developed by "
    "Shanghai AI Laboratory (上海人工智能实验室)."
)

CsvInts = Annotated[list[int], NoDecode]

# The sampling settings a job may carry.  Set explicitly (environment, .env), they apply to every model; left
# unset, the worker's engine fills in the loaded model's own defaults (models/engines/sampling.py).
SAMPLING_FIELDS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty")


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All knobs of the bot and the worker.  Names are a public contract (deployment docs use them)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- Discord -------------------------------------------------------------------------------
    discord_token: SecretStr | None = None
    discord_api_base: str = ""  # e.g. a rate-limit proxy; empty = Discord itself
    discord_gateway_url: str = ""  # e.g. a gateway proxy (wss://...); empty = Discord's own gateway
    allow_dms: bool = True
    chat_channels: CsvInts = Field(default_factory=list)
    allowed_guilds: CsvInts = Field(default_factory=list)
    allowed_channels: CsvInts = Field(default_factory=list)
    allowed_roles: CsvInts = Field(default_factory=list)
    admin_role: str = ""  # role name or id that may use /settings; Manage Server always may
    user_rate_limit: str = "5/60"  # requests / seconds per user
    max_input_chars: int = 4000
    # Answer messages in server channels in a new thread started from the message (per server/channel: /settings)
    thread_replies: bool = False

    # --- Redis ---------------------------------------------------------------------------------
    redis_url: str = ""  # empty = embedded Redis with data under DATA_DIR
    data_dir: Path = Path("data")

    # --- Engine --------------------------------------------------------------------------------
    engine: Literal["llamacpp", "openai", "lmdeploy", "test"] = "llamacpp"
    # A local GGUF, `bundled` (SmolLM2-135M), or a hub reference: owner/repo, owner/repo:Q4_K_M, owner/repo:file.gguf
    # (fetched once into the hub's cache, models/hub.py).  Empty = InternLM2.5-1.8B-Chat Q4_K_M when the hub is
    # reachable (or cached), else the bundled model.
    llamacpp_model: str = ""
    llamacpp_model_path: str = ""  # the older setting: a local GGUF file (LLAMACPP_MODEL wins when both are set)
    llamacpp_n_ctx: int = 4096
    llamacpp_threads: int = 0  # 0 = let llama.cpp decide
    openai_base_url: str = ""
    openai_api_key: SecretStr = SecretStr("")
    chat_model: str = "internlm2_5-7b-chat"
    # Two or more chat models to pick from with /model (models/routing.py): NAME or NAME=openai:URL |
    # lmdeploy:MODEL | llamacpp:GGUF | test, comma-separated, the default first.  Empty = one model, as before.
    chat_models: str = ""
    # The CHAT_MODELS names this worker serves; empty = those whose entry says what serves them (and the
    # default when it is a bare name, served by this worker's ENGINE).
    worker_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    vision_model: str = ""
    vision_base_url: str = ""  # a second OpenAI-compatible server for the vision model
    openai_context_window: int = 32768
    lmdeploy_model: str = "internlm/internlm2_5-7b-chat"
    lmdeploy_vision_model: str = ""
    lmdeploy_backend: Literal["turbomind", "pytorch"] = "turbomind"
    lmdeploy_tp: int = 1
    lmdeploy_session_len: int = 8192
    lmdeploy_thinking: bool = False  # Intern-S1's thinking mode (its <think> text would reach the chat otherwise)
    test_engine_token_delay: float = 0.0  # ENGINE=test only: seconds per token (benchmarks, tests)

    # --- Model hub (LLAMACPP_MODEL references; read by huggingface_hub's conventions) -----------------
    hf_endpoint: str = "https://huggingface.co"  # a mirror such as https://hf-mirror.com
    hf_token: SecretStr = SecretStr("")  # for gated or private repositories; never logged
    hf_home: str = ""  # empty = huggingface_hub's default (~/.cache/huggingface); models go under HF_HOME/hub
    hf_hub_offline: bool = False  # never ask the hub: use the cache, or the bundled model for the default
    # Where LLAMACPP_MODEL / LLAMACPP_CLIP_MODEL_PATH references are fetched from: `modelscope` (mainland China)
    # uses ModelScope's HTTP API (models/modelscope.py) with the modelscope SDK's own environment variables:
    model_hub: Literal["huggingface", "modelscope"] = "huggingface"
    modelscope_domain: str = ""  # empty = www.modelscope.cn (the SDK's default); a value with a scheme is used as is
    modelscope_cache: str = ""  # empty = ~/.cache/modelscope/hub (the SDK's default); models go under .../models

    # --- llama.cpp vision (optional multimodal GGUF) --------------------------------------------
    # A projector GGUF (mmproj) for LLAMACPP_MODEL — InternVL3/3.5, LLaVA, ... (models/engines/llamacpp_vision.py);
    # set = the llamacpp engine sees images.  A local file or a hub reference (owner/repo[:QUANT|:mmproj-….gguf]),
    # fetched at start like LLAMACPP_MODEL (models/hub.py `locate_projector`).
    llamacpp_clip_model_path: str = ""

    # --- Generation defaults -------------------------------------------------------------------
    # Sampling: unset (or empty) = the loaded model's own default, filled in by the worker (models/engines/
    # sampling.py: the GGUF's metadata, else the InternLM chat demo's 0.8 / 0.8 / 1024 / 1.005, SmolLM2 tamer).
    system_prompt: str = INTERNLM_META_PROMPT
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None

    # --- Worker --------------------------------------------------------------------------------
    embedded_worker: bool = True
    worker_concurrency: int = 4
    job_visibility_timeout: float = 30.0  # seconds without a heartbeat before a job is taken over
    job_max_attempts: int = 3
    job_timeout: float = 300.0  # hard deadline for one attempt
    worker_shutdown_grace: float = 20.0

    # --- Worker: streamed text (coalescing of deltas, models/context.py) ---------------------------
    # Text produced within this many ms of the previous write (or while it is in flight) goes out as one
    # `delta` event; the first piece and the final event are never delayed.  0 = one event per piece.
    delta_window_ms: float = 25.0

    # --- History -------------------------------------------------------------------------------
    history_max_turns: int = 40
    history_ttl: int = 7 * 24 * 3600  # seconds; 0 = keep forever

    # --- Limits on payloads ---------------------------------------------------------------------
    max_job_bytes: int = 2_000_000  # a job envelope larger than this is refused
    blob_ttl: int = 24 * 3600  # how long stored images live
    reply_ttl: int = 3600  # how long a finished reply stream is kept

    # --- Images (InternLM-XComposer: captions, visual Q&A, /article) --------------------------------
    max_image_bytes: int = 10_000_000  # refused from the attachment's declared size, before downloading
    max_images_per_message: int = 4
    image_max_side: int = 1024  # images are downsized so their longer side is at most this (pixels)
    image_max_pixels: int = 50_000_000  # Pillow's decompression-bomb limit (declared width × height)
    # --- Text files attached to chat messages (.txt .md .py .csv .json .log and other source files) ---
    text_file_max_bytes: int = 1_000_000  # refused from the attachment's declared size, before downloading
    text_file_max_chars: int = 12_000  # characters of all of a message's files read into the prompt; the rest is cut
    text_files_per_message: int = 5
    # A reasoning model's thinking (`<think>…</think>`, lmdeploy's reasoning_content): never in history; shown
    # `spoiler` (a short subtext line under a spoiler above the answer), `file` (attached to the final message
    # as thinking.txt) or `hidden`.
    reasoning_display: Literal["spoiler", "hidden", "file"] = "spoiler"
    # How Discord replies look: `components` (Components V2 layouts: 4,000 characters a message, the article as
    # one message with a media gallery, agent steps apart; bot/layouts.py) or `plain` messages (2,000 characters
    # each, for servers that prefer them). Per server/channel: `/settings set render_mode`.
    render_mode: Literal["plain", "components"] = "components"
    article_max_new_tokens: int = 2048  # length budget of the article text (/article)
    article_repetition_penalty: float = 1.005  # XComposer's composition demo default
    # The /article prompts: `auto` = XComposer's demo prompts for an XComposer model, chat prompts for any other
    # (InternVL, Intern-S1, a text model); `xcomposer` | `chat` force one (a served name that hides the model).
    article_prompts: Literal["auto", "xcomposer", "chat"] = "auto"
    openai_timeout: float = 120.0  # seconds to wait on the OpenAI-compatible server per request

    # --- Agent (/agent) and its Python sandbox ----------------------------------------------------
    agent_max_turns: int = 6  # model calls per agent run (each may run one tool)
    agent_timeout: float = 180.0  # overall deadline (seconds) of one agent run
    # How the agent talks to the model: `internlm2` = InternLM2's raw protocol (special tokens, any engine);
    # `tools` = OpenAI function calling (ENGINE=openai with a server that accepts `tools`; docs/agent.md);
    # `auto` = internlm2 where the engine keeps the model's InternLM2 tokens, else tools where it has them
    # (models/agent/protocol.py).
    agent_protocol: Literal["auto", "internlm2", "tools"] = "auto"
    agent_arxiv: bool = True  # offer the arXiv search tool (needs internet)
    arxiv_base_url: str = "https://export.arxiv.org/api/query"
    arxiv_timeout: float = 15.0
    arxiv_max_results: int = 3
    serper_api_key: SecretStr = SecretStr("")  # set to offer Lagent's GoogleSearch (serper.dev)
    sandbox_timeout: float = 10.0  # wall-clock seconds per code run; the whole process tree is killed
    sandbox_memory_mb: int = 512  # address-space limit of the sandboxed process (it cannot start others)
    sandbox_cpu_seconds: int = 10
    sandbox_max_processes: int = 32  # threads of the sandboxed process (RLIMIT_NPROC)
    sandbox_max_file_mb: int = 16  # largest file the code may write
    sandbox_max_open_files: int = 64
    sandbox_disk_mb: int = 64  # the run's whole working directory (a tmpfs: counts as memory)
    sandbox_max_files: int = 4096  # files and directories in the working directory (tmpfs inodes)
    sandbox_max_output_chars: int = 4000  # stdout/stderr kept (the rest is cut with a note)
    sandbox_allowed_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["numpy", "sympy", "mpmath", "matplotlib", "pandas", "scipy", "PIL"]
    )  # besides the standard library
    sandbox_isolation: Literal["bubblewrap", "off"] = "bubblewrap"  # off = no Python tool; see docs/agent.md
    sandbox_bwrap: str = "bwrap"  # the bubblewrap executable
    sandbox_hide_paths: Annotated[list[str], NoDecode] = Field(default_factory=list)  # must never be visible

    @field_validator("sandbox_isolation", mode="before")
    @classmethod
    def _isolation_renamed(cls, value: object) -> object:
        """The old names: `auto`/`namespace` are bubblewrap now; `audit` is gone (an audit hook is no barrier)."""
        if value in ("auto", "namespace"):
            return "bubblewrap"
        if value == "audit":
            raise ValueError(
                "SANDBOX_ISOLATION=audit was removed: an audit hook cannot stop determined code. "
                "Install bubblewrap and use SANDBOX_ISOLATION=bubblewrap, or 'off' to turn the "
                "Python tool off (docs/agent.md)"
            )
        return value

    @field_validator("chat_models")
    @classmethod
    def _check_chat_models(cls, value: str) -> str:
        """Fail at startup, naming the entry, rather than at the first job for that model."""
        from .routing import parse_chat_models

        parse_chat_models(value)
        return value

    @field_validator("sandbox_allowed_modules", "sandbox_hide_paths", "worker_models", mode="before")
    @classmethod
    def _split_csv_str(cls, value: object) -> object:
        return _csv(value)

    log_level: str = "INFO"

    # --- Discord sharding (large deployments; docs/deploy.md) ---------------------------------------
    discord_shard_count: int = 0  # total shards of the bot; 0 = Discord's recommended count (1 below 2,500 guilds)
    discord_shard_ids: CsvInts = Field(default_factory=list)  # shards this process runs; empty = all of them

    # --- Production: metrics, logs, bot restarts (issue 6) -----------------------------------------
    log_format: Literal["text", "json"] = "text"  # json = one object per line, with the job id
    worker_metrics_port: int = 0  # Prometheus /metrics and /healthz of a worker; 0 = off
    bot_metrics_port: int = 0  # Prometheus /metrics of the bot; 0 = off
    metrics_host: str = "127.0.0.1"  # address the metrics servers bind (0.0.0.0 in containers)
    resume_replies: bool = True  # a restarted bot finishes the replies that were streaming when it stopped

    @field_validator(
        "chat_channels", "allowed_guilds", "allowed_channels", "allowed_roles", "discord_shard_ids", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        return _csv(value)

    @field_validator("user_rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        """Fail at startup, not at the first message: `N/S` (or `N`, per 60 s), N ≥ 0 whole, S > 0."""
        value = value.strip()
        count, _, window = value.partition("/")
        try:
            ok = int(count) >= 0 and (not window or 0 < float(window) < float("inf"))
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"must be requests/seconds such as 5/60 (0/60 turns the limit off), not {value!r}")
        return value

    @field_validator(*SAMPLING_FIELDS, mode="before")
    @classmethod
    def _empty_is_the_models(cls, value: object) -> object:
        """`TEMPERATURE=` (as .env.example has it) means "not set": the model's own default."""
        return None if isinstance(value, str) and not value.strip() else value

    def explicit_sampling(self) -> dict[str, float]:
        """The sampling settings set here (environment, .env, or in code); the others are the loaded model's to
        choose — settings are read before the engine knows which model it loads."""
        return {name: value for name in SAMPLING_FIELDS if (value := getattr(self, name)) is not None}

    @property
    def rate_limit(self) -> tuple[int, float]:
        """`USER_RATE_LIMIT` as (requests, seconds); `0/...` disables it."""
        count, _, window = self.user_rate_limit.partition("/")
        return int(count or 0), float(window or 60)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own `Settings(...)` instead).  Invalid values end the
    program with one line per problem, naming the setting, instead of a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise SystemExit(f"Invalid settings (from the environment or .env):\n{problems}") from None
