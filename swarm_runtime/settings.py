"""Runtime settings: one frozen model, built from the environment in `main()` only."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from swarm_runtime.contract import (
    DEFAULT_API_PORT,
    DEFAULT_PANEL_PORT,
    MAX_TASK_LABELS,
    OFFLINE_MODEL,
    PlaceName,
)
from swarm_runtime.errors import SettingsError

GROQ_BASE_URL = "https://api.groq.com/openai/v1"
GROQ_DEFAULT_MODEL = "llama-3.1-8b-instant"
DEFAULT_LOCAL_ALLOWLIST = ("echo", "ls", "pwd", "cat", "rg", "git")
# The one workspace rule: SWARM_WORKSPACE, or else ./workspace in the current folder, for
# every process and command alike (run.py included), so that whatever is typed in the
# folder where the runtime was started reaches it, and the checkout's own files (the
# example queue.json among them) are never written.
DEFAULT_WORKSPACE_DIR = "workspace"
# The most output tokens one LLM call may ask for, and so the most its budget hold covers.
DEFAULT_MAX_OUTPUT_TOKENS = 4096

# Environment variable -> settings field. The README documents each one.
ENV_FIELDS: dict[str, str] = {
    "SWARM_WORKSPACE": "workspace",
    "SWARM_API_PORT": "api_port",
    "CONTROL_PANEL_PORT": "panel_port",
    "SWARM_INTERNAL_TOKEN": "internal_token",
    "SWARM_LLM_BASE_URL": "llm_base_url",
    "SWARM_LLM_API_KEY": "llm_api_key",
    "SWARM_LLM_MODEL": "llm_model",
    "GROQ_API_KEY": "groq_api_key",
    "SWARM_BUDGET_LIMIT": "budget_limit",
    "SWARM_RATE_LIMIT": "rate_limit",
    "SWARM_PRICES_FILE": "prices_file",
    "SWARM_QUEUE_RETAIN": "queue_retain",
    "SWARM_JOURNAL_BYTES": "journal_bytes",
    "SWARM_LEASE_SECONDS": "lease_seconds",
    "SWARM_POLL_INTERVAL": "poll_interval",
    "SWARM_API_RETRIES": "api_retries",
    "SWARM_LLM_TIMEOUT": "llm_timeout",
    "SWARM_LLM_RETRIES": "llm_retries",
    "SWARM_LOCAL_ALLOWLIST": "local_allowlist",
    "SWARM_GIT_ALLOW_WRITE": "git_allow_write",
    "SWARM_AUDIT_PROMPTS": "audit_prompts",
    "SWARM_IDENTITY": "identity",
    "SWARM_REVIEW": "review",
    "SWARM_MAX_REQUEUE_ATTEMPTS": "max_requeue_attempts",
    "SWARM_REQUEUE_BACKOFF": "requeue_backoff",
    "SWARM_CRITIC_MODEL": "critic_model",
    "SWARM_MAX_OUTPUT_TOKENS": "max_output_tokens",
    "SWARM_DATABASE_URL": "database_url",
    "SWARM_HOST": "host",
    "SWARM_WORKER_LABELS": "worker_labels",
}


LIST_FIELDS = frozenset({"local_allowlist", "worker_labels"})


def this_host(environ: Mapping[str, str] | None = None) -> str:
    """`SWARM_HOST`, else the machine's name: the one name a process gives its host."""
    environ = os.environ if environ is None else environ
    return environ.get("SWARM_HOST", "").strip() or socket.gethostname()


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    workspace: Path = Field(default_factory=lambda: Path.cwd() / DEFAULT_WORKSPACE_DIR)
    api_port: int = Field(default=DEFAULT_API_PORT, ge=0, le=65535)
    panel_port: int = Field(default=DEFAULT_PANEL_PORT, ge=0, le=65535)
    internal_token: SecretStr | None = None
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str | None = None
    groq_api_key: SecretStr | None = None
    budget_limit: float = Field(default=5.0, ge=0)
    rate_limit: int = Field(default=60, ge=1)
    prices_file: Path | None = None
    queue_retain: int = Field(default=1000, ge=0)
    # How large the queue journal grows (at least) before it is folded into queue.json.
    journal_bytes: int = Field(default=1 << 20, ge=4096)
    lease_seconds: float = Field(default=30.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    api_retries: int = Field(default=3, ge=0, le=10)
    llm_timeout: float = Field(default=60.0, gt=0)
    llm_retries: int = Field(default=3, ge=0, le=10)
    local_allowlist: tuple[str, ...] = DEFAULT_LOCAL_ALLOWLIST
    git_allow_write: bool = False
    audit_prompts: bool = False
    identity: str = "resident_default"
    review: bool = True
    max_requeue_attempts: int = Field(default=3, ge=1, le=100)
    requeue_backoff: float = Field(default=2.0, ge=0)
    critic_model: str | None = None
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, ge=1, le=65536)
    # Absent: the queue is queue.json in the workspace. A secret: it may hold a password.
    database_url: SecretStr | None = None
    # Which host this process is on, as leases, presence and events say it: hosts sharing
    # one database must each have a name of their own (two on one machine must set it).
    host: PlaceName = Field(default_factory=socket.gethostname)
    worker_labels: tuple[PlaceName, ...] = Field(default=(), max_length=MAX_TASK_LABELS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every SWARM_* variable; a bad value names its variable instead of crashing."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, field in ENV_FIELDS.items():
            raw = environ.get(variable, "").strip()
            if raw:
                values[field] = _split_list(raw) if field in LIST_FIELDS else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None
        problem = unnamed_model(settings) or unusable_database_url(settings)
        if problem is not None:
            raise SettingsError(problem)
        return settings

    @property
    def provider_base_url(self) -> str | None:
        """None means the offline provider answers."""
        if self.llm_base_url:
            return self.llm_base_url.rstrip("/")
        if self.groq_api_key:
            return GROQ_BASE_URL
        return None

    @property
    def provider_api_key(self) -> SecretStr | None:
        if self.llm_base_url:
            return self.llm_api_key
        return self.groq_api_key

    @property
    def default_model(self) -> str:
        if self.llm_model:
            return self.llm_model
        if self.groq_api_key and not self.llm_base_url:
            return GROQ_DEFAULT_MODEL
        return OFFLINE_MODEL if self.provider_base_url is None else "default"

    def secret_values(self) -> list[str]:
        """Every secret the runtime holds, so output can be scrubbed of them."""
        secrets = (self.internal_token, self.llm_api_key, self.groq_api_key)
        values = [s.get_secret_value() for s in secrets if s and s.get_secret_value()]
        password = database_password(self.database_url)
        return values + [password] if password else values


def unnamed_model(settings: Settings) -> str | None:
    """A provider named by URL must be told which model to run: a request for a model
    called "default" fails at the first task instead of at start-up."""
    if settings.llm_base_url and not settings.llm_model:
        return (
            "SWARM_LLM_BASE_URL is set but SWARM_LLM_MODEL is not: name the model the "
            "provider should run (for example SWARM_LLM_MODEL=llama3.1)"
        )
    return None


def database_password(url: SecretStr | None) -> str | None:
    if url is None:
        return None
    try:
        return urlsplit(url.get_secret_value()).password
    except ValueError:
        return None


def unusable_database_url(settings: Settings) -> str | None:
    """Only PostgreSQL is spoken; anything else is refused at start, not at first use."""
    url = settings.database_url
    if url is None:
        return None
    scheme = url.get_secret_value().partition("://")[0]
    if scheme in ("postgresql", "postgres"):
        return None
    return (
        f"SWARM_DATABASE_URL must be a postgresql:// URL (got a {scheme or 'schemeless'} "
        "value); unset it to keep the queue in the workspace's files"
    )


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _explain(exc: ValidationError) -> str:
    by_field = {field: variable for variable, field in ENV_FIELDS.items()}
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        problems.append(f"{by_field.get(field, field)}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)
