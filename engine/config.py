"""Engine configuration: one small pydantic model per concern, combined into :class:`Config`,
a pydantic-settings ``BaseSettings``.

Sources, lowest to highest precedence (pydantic-settings merges them, section by section):
defaults < TOML file (``--config``) < environment variables ``EXPLORANK__<SECTION>__<KEY>``
(lists and tables as JSON, e.g. ``EXPLORANK__BATCHING__LENGTH_BUCKETS='[16, 32, 64]'``) <
command-line flags. Everything is validated at start-up; a bad value is a :class:`ConfigError`
naming the setting (and suggesting the closest known one for a typo). The fields below, with
their comments, are the reference; ``examples/explorank.toml`` lists every one of them (a test
keeps the two in step).
"""

from __future__ import annotations

import contextvars
import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from explorank.engine.admission import DEADLINE_SHARE
from explorank.errors import ConfigError
from explorank.paths import default_cache_dir as default_cache_dir  # re-exported
from explorank.paths import default_state_db

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "EXPLORANK__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsConfig(_Section):
    """``[server.tls]``: TLS, and mutual TLS, on the gRPC port (PEM files)."""

    #: Certificate chain of the server (PEM); with ``key`` set the gRPC port serves TLS only.
    cert: Path | None = None
    #: Private key of ``cert`` (PEM, unencrypted; keep it readable by the server only).
    key: Path | None = None
    #: CA bundle (PEM) client certificates must chain to: mutual TLS.
    client_ca: Path | None = None
    #: With ``client_ca``: refuse clients without a certificate (false: verify a client
    #: certificate only when one is presented).
    require_client_cert: bool = True

    @model_validator(mode="after")
    def _together(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                "server.tls.cert and server.tls.key (--tls-cert, --tls-key) go together: "
                "set both to serve TLS, or neither"
            )
        if self.client_ca is not None and self.cert is None:
            raise ValueError(
                "server.tls.client_ca (--tls-client-ca) needs server.tls.cert and server.tls.key: "
                "mutual TLS is TLS with client certificates"
            )
        return self


class AuthConfig(_Section):
    """``[server.auth]``: bearer tokens (see :mod:`explorank.engine.auth`)."""

    #: TOML or JSON file mapping each bearer token to its scopes (rank, reward, admin).
    #: When it is set, or $EXPLORANK_TOKENS is, every call but health and reflection needs
    #: a token. Tokens are never read from the command line or this file's own settings.
    tokens_file: Path | None = None


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    #: Prometheus metrics HTTP port; 0 disables the endpoint.
    metrics_port: int = Field(9464, ge=0, le=65535)
    #: The metrics endpoint has no authentication: keep it on loopback unless a firewall or a
    #: scraper-only network protects it.
    metrics_host: str = "127.0.0.1"
    #: Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    grace_s: float = Field(10.0, ge=0)
    #: After SIGTERM, health reports NOT_SERVING for this long while calls are still served,
    #: so load balancers move traffic away before the listener closes.
    drain_s: float = Field(5.0, ge=0)
    #: How often health is re-checked (state store reachable, encoder batcher running).
    health_interval_s: float = Field(1.0, gt=0)
    max_concurrent_rpcs: int = Field(2048, ge=1)
    max_message_mb: int = Field(16, ge=1, le=1024)
    #: Deadline applied to calls that carry none (seconds).
    default_deadline_s: float = Field(30.0, gt=0)
    #: Serving processes on the one port (SO_REUSEPORT), each with an equal share of the
    #: CPUs; they share the state store (docs/operations.md, "Several worker processes").
    workers: int = Field(1, ge=1, le=256)
    #: With several workers, a worker runs a batch on a second encoder session with a thread
    #: per CPU of the whole group while the group's work is serial (docs/operations.md).
    worker_burst: bool = True
    #: Serve the Open Inference Protocol (KServe v2, ``inference.GRPCInferenceService``:
    #: models ``encoder`` and ``rank``) on the same port, next to ``explorank.v1.Ranker``.
    oip: bool = True
    #: Log lines as human-readable text, or one JSON object per line (timestamp, level,
    #: logger, message, event_id where known) for log pipelines (serve --log-format).
    log_format: Literal["text", "json"] = "text"
    #: Once serving, move everything start-up allocated out of the garbage collector's scans
    #: (gc.freeze): full collections pause the event loop ~5x shorter (docs/operations.md).
    gc_freeze: bool = True
    tls: TlsConfig = Field(default_factory=TlsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)


class ModelConfig(_Section):
    #: Bundle directory; None = the default bundle (built into cache_dir on first run).
    bundle: Path | None = None
    cache_dir: Path | None = None
    #: Check every bundle file's sha256 at start-up; off (--no-verify) still confines every
    #: path to the bundle and loads only files listed in the manifest.
    verify_checksums: bool = True
    #: ed25519 public keys (PEM); when set, a bundle is served only if manifest.json.sig is a
    #: valid signature of its manifest by one of them (see docs/operations.md).
    trusted_keys: list[Path] = Field(default_factory=list)
    #: Reload by itself when the bundle's manifest changes (bundle may be a symlink that is
    #: switched to a new directory); a refused bundle leaves the old one serving.
    watch: bool = False
    watch_interval_s: float = Field(2.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _watch_needs_bundle(self) -> ModelConfig:
        if self.watch and self.bundle is None:
            raise ValueError(
                "model.watch needs model.bundle (the directory, or a symlink to it, to watch)"
            )
        return self


class GpuConfig(_Section):
    """``[backend.gpu]``: the encoder on an NVIDIA GPU (ONNX Runtime's CUDA execution provider).
    Unverified on hardware in this repository's CI; scripts/gpu-check.sh verifies it on a GPU."""

    #: Replay each planned (batch, length) shape from a captured CUDA graph: batches are padded
    #: to the length bucket and to the next planned batch size (engine/backends/cuda_graphs.py).
    #: auto = on where ONNX Runtime can capture the encoder (else logged and off); on = required.
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    #: Batch sizes that get a graph at each length bucket (capped by the bucket's batch limit,
    #: which is always added). None = the powers of two up to it (1, 2, 4, ... 32 by default).
    graph_batch_sizes: list[int] | None = None
    #: Catalog texts the fp16 encoder is checked on at start-up, on the GPU that serves it,
    #: against the bundle's fp32 embeddings (below the gate: auto serves fp32, fp16 fails).
    #: 0 = no check.
    fp16_check_texts: int = Field(512, ge=0)

    @field_validator("graph_batch_sizes")
    @classmethod
    def _sizes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(s < 1 for s in v)):
            raise ValueError("must be a non-empty list of positive batch sizes, or null")
        return sorted(set(v)) if v is not None else None


class BackendConfig(_Section):
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    provider: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    #: auto = the fp16 TensorRT plan on a GPU when present, else on a GPU the bundle's fp16
    #: ONNX encoder on the CUDA EP when it has one and it passes the load-time check on this
    #: GPU; on CPU the INT8 encoder when the bundle has one and it passes the load-time check
    #: on this CPU; else fp32.
    precision: Literal["auto", "fp32", "int8", "fp16"] = "auto"
    #: Catalog texts the INT8 encoder is checked on at start-up, on this CPU, against the
    #: bundle's fp32 embeddings (below the gate: auto serves fp32, int8 fails). 0 = no check.
    int8_check_texts: int = Field(512, ge=0)
    #: Which of the bundle's INT8 encoders may serve: "auto" = every variant that passes the
    #: load-time check is timed against fp32 and the fastest serves; or a variant's name.
    int8_variant: str = "auto"
    #: Timed rounds of the warm-up speed comparison (fp32 vs each INT8 variant, one small
    #: batch each per round, fastest call kept). 0 = no timing: the exporter's order decides.
    speed_check_rounds: int = Field(3, ge=0, le=100)
    #: None = the CPUs actually available to this process (affinity / cgroup quota).
    intra_op_threads: int | None = Field(None, ge=1)
    #: Let ONNX Runtime's intra-op threads spin (busy-wait) between parallel sections (its
    #: default). Off, they sleep instead: the encoder alone is 4-15 % slower on two cores, and
    #: the server then uses a third less CPU at the same throughput — the cores go to other
    #: processes on the machine (docs/operations.md).
    allow_spinning: bool = True
    #: Encoder batches computed side by side under concurrent load, each on its own session
    #: with an equal share of the threads (a batch alone still gets every thread); "auto" =
    #: 2 on a CPU with two or more threads, else 1 (docs/operations.md, "Encoder lanes").
    lanes: int | Literal["auto"] = "auto"
    gpu: GpuConfig = Field(default_factory=GpuConfig)

    @field_validator("lanes")
    @classmethod
    def _lanes(cls, v: int | str) -> int | str:
        if v != "auto" and not 1 <= int(v) <= 64:
            raise ValueError('must be "auto" or a number of lanes in 1..64')
        return v

    def lane_count(self) -> int:
        """The lanes asked for ("auto": 2; the backend caps them at its threads)."""
        return 2 if self.lanes == "auto" else int(self.lanes)


class BatchingConfig(_Section):
    #: 1 disables batching.
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    #: Pending encoder requests beyond this are refused with RESOURCE_EXHAUSTED.
    max_queue_size: int = Field(1024, ge=1)
    #: The largest share of the queue one request may take (others keep being served).
    max_request_share: float = Field(0.25, gt=0, le=1)
    #: Admission by time: a request whose predicted wait for the encoder (queued tokens x
    #: measured cost per token, scaled down when admitted requests really waited less; keep
    #: it above one full batch's time) exceeds this, or that would miss its own deadline, is
    #: refused at once with RESOURCE_EXHAUSTED instead of queueing. None = count-based only.
    max_queue_wait_ms: float | None = Field(750.0, gt=0)
    #: The deadline rule of admission: a call is admitted only if its encoding is predicted
    #: to end within this share of the time left to its deadline (the rest is for scoring,
    #: the policy, logging the event and the answer). Lower: a tighter admitted p99 under
    #: overload, fewer calls admitted.
    deadline_share: float = Field(DEADLINE_SHARE, gt=0, le=1)
    #: Padded tokens per batch: a batch of long texts holds fewer of them (its latency stays
    #: bounded). The default equals max_batch_size x the largest bucket (32 x 128).
    max_batch_tokens: int | None = Field(4096, ge=1)
    #: With encoder lanes (backend.lanes > 1) a batch holds at most this many sequences per
    #: thread of a lane: a lane computes on its share of the cores, so a large batch holds
    #: all its requests for long while saving little (docs/operations.md, "Encoder lanes").
    lane_batch_size: int = Field(4, ge=1, le=4096)
    #: Let requests of other length buckets join a batch when padding them costs less than
    #: the batch overhead they save (from the measured cost model of this encoder).
    merge_buckets: bool = True
    #: Requests are batched only with others of the same bucket, and a batch is padded to
    #: its longest sequence (rounded up to 8), so finer buckets waste less padding.
    length_buckets: list[int] = Field(default_factory=lambda: [16, 32, 48, 64, 80, 96, 112, 128])

    @field_validator("length_buckets")
    @classmethod
    def _buckets(cls, v: list[int]) -> list[int]:
        if not v or any(b <= 0 for b in v):
            raise ValueError("must be a non-empty list of positive token counts")
        return sorted(set(v))


class CacheConfig(_Section):
    user_max_entries: int = Field(100_000, ge=0)
    #: Memory budget of the user-embedding cache (megabytes).
    user_max_mb: float = Field(64.0, ge=0)
    user_ttl_s: float | None = Field(300.0, gt=0)
    item_max_entries: int = Field(100_000, ge=0)
    #: Memory budget of the cache of encoded (non-catalog) candidate texts (megabytes).
    item_max_mb: float = Field(128.0, ge=0)
    #: Recent Rank events kept in memory for Rewards and repeated event ids.
    event_max_entries: int = Field(10_000, ge=0)
    #: Memory budget of those events (megabytes).
    event_max_mb: float = Field(64.0, ge=0)


class LimitsConfig(_Section):
    max_candidates: int = Field(10_000, ge=1)
    #: Candidates not in the catalog (given with their text, so they must be encoded) per
    #: request; must fit batching.max_queue_size x batching.max_request_share (with the user
    #: context): a request over it is INVALID_ARGUMENT naming this limit, never a retryable
    #: RESOURCE_EXHAUSTED.
    max_new_texts: int = Field(255, ge=0)
    max_top_k: int = Field(1000, ge=1)
    default_top_k: int = Field(10, ge=1)
    max_text_chars: int = Field(8192, ge=1)
    max_text_bytes: int = Field(32_768, ge=1)
    max_history: int = Field(100, ge=0)
    max_id_chars: int = Field(256, ge=1)
    max_id_bytes: int = Field(1024, ge=1)


class RankingConfig(_Section):
    default_scorer: str = "mf"
    default_policy: str = "epsilon_greedy"
    #: Per-scorer constructor parameters, e.g. {"neural": {"chunk_size": 4096}}.
    scorers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Per-policy constructor parameters, e.g. {"epsilon_greedy": {"epsilon": 0.05}}.
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Base seed mixed with each event id: the same event id ranks the same way.
    seed: int = 0
    #: How the user vector is built (explorank.engine.user_vectors): "text" = the encoder
    #: on context_text + the history items' texts; "history" = the recency-weighted mean of
    #: the history items' catalog embeddings, no encoder call (context_text is encoded only
    #: when there is no history); "both" = history vector + encoded context_text.
    user_representation: Literal["text", "history", "both"] = "text"
    #: "history"/"both": the i-th most recent history item weighs 0.5 ** (i / half_life).
    history_half_life: float = Field(10.0, gt=0)


class StateConfig(_Section):
    store: str = "sqlite"
    #: Directory of the sqlite database (state.db); None = $EXPLORANK_STATE_DIR, else
    #: $XDG_STATE_HOME/explorank, else ~/.local/state/explorank. options.path wins.
    dir: Path | None = None
    #: Store options, e.g. {"path": "/var/lib/explorank/state.db"} or {"url": "redis://..."}.
    options: dict[str, Any] = Field(default_factory=dict)
    #: Rewards later than this after the Rank are refused (FAILED_PRECONDITION).
    reward_window_s: float = Field(86_400.0, gt=0)
    #: Applied to every returned item that got no reward when its event's window closes
    #: (e.g. 0.0 or -0.1 for "shown, not clicked"); None = off. Needs a store that supports it (sqlite).
    default_reward: float | None = Field(None, ge=-1.0, le=1.0)
    #: How often closed windows are looked for when default_reward is set.
    window_check_interval_s: float = Field(60.0, gt=0)
    #: How often policy statistics are refreshed from a shared store (Redis).
    sync_interval_ms: float = Field(500.0, gt=0)
    #: How often a shared store is searched for crashed replicas' unflushed statistics.
    recovery_interval_s: float = Field(60.0, gt=0)
    #: Drop old events from the state store (their statistics stay). On by default.
    retention: bool = True
    #: Events older than this are dropped; None = reward_window_s + retention_margin_s.
    retention_max_age_s: float | None = Field(None, gt=0)
    #: How long an event is kept after its reward window closed (default 1 day).
    retention_margin_s: float = Field(86_400.0, ge=0)
    retention_max_events: int | None = Field(None, ge=1)
    retention_interval_s: float = Field(600.0, gt=0)

    def retention_age_s(self) -> float:
        """The age beyond which events are dropped (see retention_max_age_s)."""
        if self.retention_max_age_s is not None:
            return self.retention_max_age_s
        return self.reward_window_s + self.retention_margin_s

    def store_options(self) -> dict[str, Any]:
        """``options`` with the sqlite database's path filled in from ``dir`` (or the
        default state directory) when no ``path`` is given; never the current directory."""
        if self.store != "sqlite" or self.options.get("path"):
            return dict(self.options)
        return {**self.options, "path": str(default_state_db(self.dir))}


class PluginsConfig(_Section):
    #: Load no third-party plugins (entry points); EXPLORANK_PLUGINS=none does the same.
    block_external: bool = False
    #: Only these third-party plugins (entry-point or distribution names); None = all.
    allow: list[str] | None = None
    #: Names not to load or register: a plugin (entry-point, distribution or built-in module
    #: name) or a scorer / policy / store (built-ins included). EXPLORANK_PLUGINS_BLOCK adds more.
    block: list[str] = Field(default_factory=list)
    #: Names a third-party plugin may take over from a built-in (e.g. ["softmax"]).
    override: list[str] = Field(default_factory=list)


class TracingConfig(_Section):
    """``[tracing]``: OpenTelemetry spans per call (the ``otel`` extra; see
    :mod:`explorank.engine.tracing`). Where they go is set by the standard ``OTEL_*``
    environment variables (endpoint, protocol, headers, sampler, service name)."""

    #: Off by default (no OpenTelemetry import, no cost); serve --tracing turns it on.
    enabled: bool = False
    #: otlp (OTEL_EXPORTER_OTLP_* decide the endpoint and protocol) or console (stdout).
    exporter: Literal["otlp", "console"] = "otlp"
    #: service.name of the spans when OTEL_SERVICE_NAME is not set.
    service_name: str = "explorank"


class Config(BaseSettings):
    """Every setting of ``explorank serve`` (see the module docstring for the sources)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_assignment=True,
        env_parse_none_str="null",
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="after")
    def _cross(self) -> Config:
        lim, bc = self.limits, self.batching
        if lim.default_top_k > lim.max_top_k:
            raise ValueError("limits.default_top_k must not exceed limits.max_top_k")
        share = int(bc.max_queue_size * bc.max_request_share)
        if lim.max_new_texts + 1 > share:
            raise ValueError(
                f"limits.max_new_texts ({lim.max_new_texts}) plus the user context must fit one "
                f"request's share of the encoder queue: batching.max_queue_size "
                f"({bc.max_queue_size}) x batching.max_request_share ({bc.max_request_share}) "
                f"= {share}; lower the limit or raise the queue"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init) > environment > TOML file > defaults; no .env or secret files."""
        toml_path, environ = _SOURCES.get()
        env: PydanticBaseSettingsSource = (
            env_settings if environ is None else _MappingEnvSource(settings_cls, environ)
        )
        if toml_path is None:
            return (init_settings, env)
        return (init_settings, env, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))


#: (TOML file, environment) of the :func:`load_config` call in progress; None = os.environ.
_SOURCES: contextvars.ContextVar[tuple[Path | None, Mapping[str, str] | None]] = (
    contextvars.ContextVar("explorank_config_sources", default=(None, None))
)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ`` (tests,
    embedding applications)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        from pydantic_settings.sources.utils import parse_env_vars

        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _section_fields(path: tuple[str, ...]) -> list[str] | None:
    """The setting names of the section at ``path`` (() = the section names), or None when
    ``path`` is not a section."""
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part)
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return list(model.model_fields)


def _did_you_mean(loc: tuple[str, ...]) -> str:
    """``; did you mean 'batching.max_batch_size'?`` for an unknown setting, or ''."""
    *section, key = loc
    known = _section_fields(tuple(section)) or []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{'.'.join([*section, close[0]])}'?"
    if len(loc) == 2:  # a known setting in the wrong section, e.g. [server] max_batch_size
        for other in Config.model_fields:
            if key in (_section_fields((other,)) or []):
                return f"; did you mean '{other}.{key}'?"
    return ""


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        got = err.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = err["msg"]
        hint = ""
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
            hint = _did_you_mean(tuple(str(p) for p in err["loc"]))
        lines.append(f"{loc}: {msg}{got_s}{hint}")
    return f"invalid configuration ({source}): " + "; ".join(lines)


def _unknown_env_sections(environ: Mapping[str, str]) -> list[str]:
    """``EXPLORANK__<SECTION>__...`` variables whose section does not exist: the settings
    source would skip them silently, so they are reported as unknown settings."""
    sections = set(Config.model_fields)
    out = []
    for name in environ:
        if name.upper().startswith(ENV_PREFIX):
            parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
            if parts and parts[0] not in sections:
                out.append(".".join(parts))
    return sorted(out)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults < TOML file < environment (``environ``, default ``os.environ``) <
    ``overrides`` (from CLI flags). Raises :class:`ConfigError` naming every bad setting."""
    toml_path: Path | None = None
    source = "defaults"
    if path is not None:
        toml_path = Path(path).expanduser()
        if not toml_path.is_file():
            raise ConfigError(f"config file {toml_path} does not exist (check --config)")
        try:
            tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {toml_path} is not valid TOML: {exc}") from exc
        source = str(toml_path)
    env = os.environ if environ is None else environ
    if any(k.upper().startswith(ENV_PREFIX) for k in env):
        source += " + environment"
    if overrides:
        source += " + command line"
    unknown = _unknown_env_sections(env)
    if unknown:
        hints = [f"{u}: unknown setting{_did_you_mean(tuple(u.split('.')))}" for u in unknown]
        raise ConfigError(f"invalid configuration ({source}): " + "; ".join(hints))
    token = _SOURCES.set((toml_path, environ))
    try:
        return Config(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    finally:
        _SOURCES.reset(token)
