"""The FastAPI application: ``create_app(settings)`` builds it; the lifespan starts and stops the runtime.

Start-up (before the first request is accepted): open the registry, load the backbone (off the event
loop) in its precision mode (``auto``: measured here, service.precision), start the engine thread,
load the catalog, upload the seed memories the registry does not have yet. Shutdown: stop admitting,
finish admitted requests, close the registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry

from memories.backbone import Backbone
from memories.backbones import default_cache_dir, load_backbone
from memories.compiled import Buckets, compile_backbone
from memories.config import SpartanConfig
from memories.errors import ConfigError
from memories.fused import fuse_routing
from memories.loraxs import load_factors
from service.api import errors
from service.api.openapi import spec_builder
from service.api.routes import classify, health, memories, usage, v2
from service.cpu import available_cpus
from service.engine import Engine
from service.guards import ClientTimeouts
from service.memlimit import cache_budget, memory_limit, resident_bytes
from service.metrics import HTTPMetrics, RuntimeCollector
from service.precision import PrecisionChoice, choose
from service.registry.base import Registry
from service.registry.files import FileRegistry
from service.registry.redis import RedisRegistry
from service.runtime import Runtime
from service.settings import ServiceSettings
from service.tasks import DEFAULT_TENANT
from service.tenancy import Tenancy

log = logging.getLogger("spartan.serve")


def make_registry(settings: ServiceSettings) -> Registry:
    retention = settings.usage_retention_days
    if settings.registry == "redis":
        return RedisRegistry(settings.redis_url, settings.redis_prefix, settings.keep_versions, retention)
    return FileRegistry(settings.registry_dir, settings.keep_versions, usage_retention_days=retention)


def operation_id(route: APIRoute) -> str:
    """An operation's id in the spec: its handler's name (put_memory, classify, ...), which clients
    generated from the spec turn into method names."""
    return route.name


async def _prepare_lora_xs(model: Backbone, settings: ServiceSettings) -> None:
    """Give the backbone LoRA-XS factors up to ``lora_xs_max_rank`` (none when it is 0 or the
    layers are compiled): from its fp32 weights, so before any precision switch, read from or
    written to the cache directory. A backbone given in another precision keeps the factors it
    came with, cut to the setting; without them it serves no LoRA-XS memory."""
    rank = min(settings.lora_xs_max_rank, model.hidden_size)
    if rank == 0 or model.compiled:
        model.factors = None
    elif model.factors is not None and model.factors.max_rank >= rank:
        model.factors = model.factors.up_to(rank)
    elif model.precision == "fp32":
        cache = settings.cache_dir or default_cache_dir()
        model.factors = await asyncio.to_thread(load_factors, model, rank, cache, log.info)
    else:
        model.factors = None
    log.info("%s", model.factors.describe() if model.factors else "LoRA-XS memories are not served")


def create_app(settings: ServiceSettings, backbone: Backbone | None = None) -> FastAPI:
    """The service; pass ``backbone`` to share one already loaded (tests, benchmarks)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # a bad keys file fails start-up before anything is loaded
        tenancy = await asyncio.to_thread(Tenancy, settings.api_keys, settings.api_keys_file)
        if tenancy.keyring.open:
            log.warning(
                "no API keys configured: the service is open to every caller (local development mode)"
            )
        app.state.tenancy = tenancy
        registry = make_registry(settings)
        model = backbone
        if model is None:
            model = await asyncio.to_thread(load_backbone, settings.backbone, settings.cache_dir)
        await _prepare_lora_xs(model, settings)
        if backbone is None:
            model, precision = await choose(
                settings.precision,
                model,
                registry,
                settings.seed_dir,
                settings.max_batch_size,
                settings.max_upload_bytes,
                settings.auto_probe_rounds,
                (settings.cache_dir or default_cache_dir()) if settings.auto_cache else None,
            )
        elif settings.precision in ("auto", model.precision):  # a given backbone keeps its mode
            precision = PrecisionChoice(settings.precision, model.precision)  # type: ignore[arg-type]
        else:
            raise ConfigError(
                f"the given backbone is {model.precision}, the settings ask for {settings.precision}"
            )
        if model.routing is None:  # a given backbone may come fused already
            shapes = [SpartanConfig()]  # the paper's; memories of other shapes route eagerly
            routing = await asyncio.to_thread(fuse_routing, [model], settings.fused_routing, shapes)
        else:
            routing = model.routing.describe()
        log.info("memory routing: %s", routing)
        precision = dataclasses.replace(precision, routing=routing)
        threads = settings.threads or available_cpus()
        buckets = None
        if settings.compile:  # before readiness: /readyz answers once every bucket is compiled
            buckets = Buckets(tuple(settings.compile_batch_sizes), tuple(settings.compile_lengths))
            log.info("compiling %d bucket shapes (batch x length) before serving", len(buckets.shapes))
            done = await asyncio.to_thread(compile_backbone, model, buckets, progress=log.info)
            log.info("compiled in %.1f s; checked against eager: %s", done["seconds"], done["max_abs_diff"])
        engine = Engine(
            model,
            settings.max_batch_size,
            settings.max_wait_ms / 1000,
            settings.queue_size,
            threads,
            buckets=buckets,
            tenant_queue_rows=settings.tenant_queue(),
            weight=tenancy.weight,
            max_batch_tokens=settings.max_batch_tokens,
            trim_every_s=settings.trim_every_s,
            admit_by_deadline=settings.admit_by_deadline,
        )
        cache_bytes = settings.cache_bytes
        if cache_bytes is None:  # sized once the backbone is resident, so its bytes are counted
            budget = cache_budget(memory_limit(), resident_bytes())
            log.info("cache budget: %s", budget.why)
            cache_bytes = budget.bytes
        runtime = Runtime(settings, model, registry, engine, tenancy, precision, cache_bytes)
        await runtime.start()
        if settings.seed_dir is not None:
            seeded = await runtime.seed(settings.seed_dir, DEFAULT_TENANT)
            log.info(
                "seeded %d memories from %s: %s", len(seeded), settings.seed_dir, ", ".join(seeded) or "-"
            )
        log.info(
            "serving backbone %s (%s, %s) with %d torch threads, %s registry, cache %d MB",
            model.name,
            model.fingerprint[:12],
            model.precision,
            threads,
            settings.registry,
            cache_bytes >> 20,
        )
        app.state.runtime = runtime
        metrics_registry.register(RuntimeCollector(runtime))
        watcher = asyncio.create_task(tenancy.watch(settings.keys_reload_s), name="keys-file-watch")
        try:
            yield
        finally:
            watcher.cancel()
            await runtime.stop()

    app = FastAPIOffline(  # /docs and /redoc load Swagger UI and ReDoc from the package, offline
        title="spartan-serve",
        summary="Multi-tenant text classification with SPARTAN memories on one frozen encoder",
        version="0.1.0",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    metrics_registry = CollectorRegistry()
    app.state.metrics_registry = metrics_registry
    app.add_middleware(HTTPMetrics, registry=metrics_registry)
    app.add_middleware(ClientTimeouts, body_s=settings.body_timeout_s, send_s=settings.send_timeout_s)
    errors.install(app)
    app.openapi = spec_builder(app, settings.max_inputs, settings.max_text_chars)  # type: ignore[method-assign]
    app.include_router(classify.router)
    app.include_router(memories.router)
    app.include_router(usage.router)
    app.include_router(health.router)
    app.include_router(v2.router)
    return app
