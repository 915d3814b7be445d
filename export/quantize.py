"""INT8 quantization of the encoder, behind an accuracy gate: static and dynamic variants.

Two kinds of INT8 encoder, both ONNX Runtime CPU graphs with per-channel int8 weights:

- **static** (:class:`StaticInt8Config`, :mod:`explorank.export.static_int8`): calibrated QDQ,
  activation scales fixed at export. A text's embedding does not depend on what it is batched
  with or how far it is padded (1e-7 apart at most, the fp32 rounding of the operators in
  between). This is the first variant of a default export.
- **dynamic** (:class:`Int8Config`): activation scales computed per batch (``quantize_dynamic``).
  No calibration, but an embedding moves with its batch companions and padding (1e-2 on a
  tiny BERT, up to 0.03 in scores on MiniLM); kept as a second variant where it passes.

The gate: min cosine >= 0.99 and top-10 overlap >= 0.9 to the fp32 encoder on **three** sets,
all of which must pass: the catalog's validation sample, held-out catalog texts (never in the
calibration) and held-out generic English texts (the odd lines of the generic set shipped with
explorank; the even lines calibrate). A configuration that passes on the catalog but not on
texts it was not calibrated on is refused.

Plain ``quantize_dynamic`` (per-tensor weights) loses too much on MiniLM: 0.902 min cosine to
the fp32 embeddings. Dynamic configurations measured on all-MiniLM-L6-v2 (fused graph, 512
default-catalog texts; top-10 overlap = mean neighbour overlap, self excluded) on two CPUs —
a 2-core AMD EPYC with AVX-512 VNNI (first landing, 2026-11-29) and a 2-core AMD EPYC with AVX2
and FMA but no AVX-512 (2026-12-01):

=====================================================  =================  =================
configuration (weights per channel)                    VNNI min cos/top10  AVX2 min cos/top10
=====================================================  =================  =================
everything int8                                        0.9842 / 0.960     0.9666 / 0.878
FFN-output MatMuls + embeddings fp32                   0.9939 / 0.966     0.9884 / 0.916
all FFN MatMuls + embeddings fp32                      0.9971 / 0.980     0.9896 / 0.937
7-bit weights (reduce_range), FFN-output fp32          —                  0.9896 / 0.933
7-bit weights, all FFN MatMuls fp32                    —                  0.9975 / 0.961
7-bit weights, only the fused QKV attention int8       —                  0.9979 / 0.965
uint8 weights, FFN-output fp32                         —                  0.9941 / 0.933
=====================================================  =================  =================

On held-out generic texts the dynamic configurations do worse (AVX2 VM, 7-bit weights with
the FFN outputs fp32: min cosine 0.968): short texts ("No.") have few tokens to average the
quantization error over. The static configurations and their measurements (speed included)
are in README's Benchmarks section and docs/benchmarks.md.

Why the CPUs differ: ONNX Runtime multiplies uint8 activations by int8 weights; without VNNI
the x86 kernel sums pairs of products in saturating 16-bit registers, so large activations
clip (on a tiny random BERT the min cosine falls to 0.22). 7-bit weights (``reduce_range``)
or uint8 weights cannot saturate: those models compute the same on every x86 CPU and are
called *portable* here (``portable``). See :mod:`explorank.engine.cpu`.

The search: :func:`search_list` gives the configurations of one kind tried, in order. On CPUs
whose int8 kernels do not saturate (VNNI, ARM) the fastest full-range configuration comes
first, then the portable ones; on AVX2-only CPUs only the portable ones are tried (the
full-range ones would be gated on numbers this CPU computes differently from a VNNI CPU, and
vice versa). ``int8_search="portable"`` forces the AVX2 list anywhere (export on a new CPU for
a fleet of old ones); ``EXPLORANK_CPU_FEATURES`` injects the CPU flags. For each kind the first
configuration that passes is kept; its name, settings, whether it is portable, the CPU it was
gated on and every attempt's numbers (held-out sets included) go into the manifest
(``encoder.int8_variants``, the first also as ``encoder.int8_config``). :func:`all_configs`
names every configuration, including ones never searched (:data:`EXTRA`), for measurements.
A bundle still moves between machines, so the engine re-checks every INT8 variant on the
serving CPU at start-up and times the ones that pass against fp32
(:mod:`explorank.engine.int8_check`).

Nodes are selected by *role*, found structurally in the fused graph (not by name), so the same
configurations apply to any BERT-family checkpoint exported by :mod:`explorank.export`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from explorank.errors import ExportError, InvalidArgumentError, ParityError
from explorank.export import parity

log = logging.getLogger(__name__)

ROLES = ("embedding", "attention", "qkv", "attention_out", "ffn_in", "ffn_out")
_GELU_OPS = frozenset({"BiasGelu", "FastGelu", "Gelu"})


SEARCH_MODES = ("auto", "all", "portable")


@dataclass(frozen=True)
class Int8Config:
    """One dynamic-quantization configuration. ``keep_fp32`` lists node roles left in fp32;
    ``weight_type`` is ``"int8"`` or ``"uint8"``."""

    name: str
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: str = "int8"
    keep_fp32: tuple[str, ...] = ()
    description: str = ""

    kind = "dynamic"

    @property
    def portable(self) -> bool:
        """True when no x86 int8 kernel can saturate on it (7-bit or uint8 weights): it
        computes the same embeddings on VNNI and on AVX2-only CPUs."""
        return self.reduce_range or self.weight_type == "uint8"


@dataclass(frozen=True)
class StaticInt8Config:
    """One static (calibrated QDQ) configuration (:mod:`explorank.export.static_int8`).

    ``attention``: ``"mha"`` (Q, K, V as MatMuls: quantizable) or ``"fused"`` (the bundle's
    fused ``Attention``, whose QKV GEMM stays fp32). ``smooth``: the roles whose input
    activations are smoothed first. Activations are uint8 with fixed, calibrated scales."""

    name: str
    attention: str = "mha"
    smooth: tuple[str, ...] = ("qkv", "ffn_in")
    smooth_alpha: float = 0.5
    keep_fp32: tuple[str, ...] = ("embedding",)
    per_channel: bool = True
    reduce_range: bool = True
    weight_type: str = "int8"
    #: "uint8" (asymmetric, u8s8 kernels) or "int8" (symmetric, s8s8 kernels).
    activation_type: str = "uint8"
    description: str = ""

    kind = "static"

    @property
    def portable(self) -> bool:
        return self.reduce_range or self.weight_type == "uint8"


AnyInt8Config = Int8Config | StaticInt8Config


#: Full-range int8 weights: fastest and most accurate where int8 sums do not saturate.
FULL_RANGE: tuple[Int8Config, ...] = (
    Int8Config(
        "per_channel_ffn_out_fp32",
        keep_fp32=("embedding", "ffn_out"),
        description="per-channel int8 weights; FFN output projections and embeddings fp32",
    ),
)
#: 7-bit weights: no saturation on any x86 CPU.
PORTABLE: tuple[Int8Config, ...] = (
    Int8Config(
        "portable_ffn_out_fp32",
        reduce_range=True,
        keep_fp32=("embedding", "ffn_out"),
        description="per-channel 7-bit weights; FFN output projections and embeddings fp32",
    ),
    Int8Config(
        "portable_ffn_fp32",
        reduce_range=True,
        keep_fp32=("embedding", "ffn_in", "ffn_out"),
        description="per-channel 7-bit weights for attention only; all FFN MatMuls fp32",
    ),
    Int8Config(
        "portable_qkv_only",
        reduce_range=True,
        keep_fp32=("embedding", "attention_out", "ffn_in", "ffn_out"),
        description="7-bit weights; only the fused QKV attention is int8",
    ),
)


#: Static QDQ, full-range weights (VNNI): tried first where int8 sums do not saturate.
STATIC_FULL_RANGE: tuple[StaticInt8Config, ...] = (
    StaticInt8Config(
        "static_ffn_out_fp32",
        reduce_range=False,
        keep_fp32=("embedding", "ffn_out"),
        description="static QDQ, per-channel int8 weights; Q/K/V, attention output and FFN "
        "input MatMuls int8 (Q/K/V and FFN inputs smoothed); FFN output MatMuls fp32",
    ),
)
#: Static QDQ with 7-bit weights: no saturation on any x86 CPU.
STATIC_PORTABLE: tuple[StaticInt8Config, ...] = (
    StaticInt8Config(
        "static_portable_ffn_out_fp32",
        keep_fp32=("embedding", "ffn_out"),
        description="static QDQ, per-channel 7-bit weights; Q/K/V, attention output and FFN "
        "input MatMuls int8 (Q/K/V and FFN inputs smoothed); FFN output MatMuls fp32",
    ),
    StaticInt8Config(
        "static_portable_ffn_in_only",
        attention="fused",
        smooth=("ffn_in",),
        keep_fp32=("embedding", "attention_out", "ffn_out"),
        description="static QDQ, per-channel 7-bit weights; only the (smoothed) FFN input "
        "MatMuls int8",
    ),
)
#: Configurations never searched by default, kept for measurements (``--int8-configs``).
EXTRA: tuple[AnyInt8Config, ...] = (
    StaticInt8Config(
        "static_portable_all",
        keep_fp32=("embedding",),
        description="static QDQ, 7-bit weights, every MatMul int8 (Q/K/V, FFN inputs smoothed)",
    ),
    StaticInt8Config(
        "static_portable_no_smoothing",
        smooth=(),
        keep_fp32=("embedding", "ffn_out"),
        description="static_portable_ffn_out_fp32 without smoothing",
    ),
    StaticInt8Config(
        "static_portable_fused_attention",
        attention="fused",
        keep_fp32=("embedding", "ffn_out"),
        smooth=("ffn_in",),
        description="static QDQ, 7-bit weights on the Attention-fused graph (its QKV fp32); "
        "attention output and smoothed FFN input MatMuls int8",
    ),
    StaticInt8Config(
        "static_s8s8_ffn_out_fp32",
        reduce_range=False,
        activation_type="int8",
        keep_fp32=("embedding", "ffn_out"),
        description="static_ffn_out_fp32 with symmetric int8 activations (s8s8 kernels)",
    ),
    StaticInt8Config(
        "static_u8u8_ffn_out_fp32",
        reduce_range=False,
        weight_type="uint8",
        keep_fp32=("embedding", "ffn_out"),
        description="static_portable_ffn_out_fp32 with full-range uint8 weights (u8u8 kernels)",
    ),
    Int8Config(
        "dynamic_all",
        keep_fp32=("embedding",),
        description="dynamic, per-channel int8 weights, every MatMul and attention int8 (u8s8)",
    ),
    Int8Config(
        "dynamic_portable_all",
        reduce_range=True,
        keep_fp32=("embedding",),
        description="dynamic, per-channel 7-bit weights, everything int8",
    ),
    Int8Config(
        "dynamic_u8u8_all",
        weight_type="uint8",
        keep_fp32=("embedding",),
        description="dynamic, per-channel uint8 weights (u8u8 kernels), everything int8",
    ),
)
KINDS = ("static", "dynamic")


def all_configs() -> dict[str, AnyInt8Config]:
    """Every named configuration (searched or not), for ``--int8-configs``."""
    configs: tuple[AnyInt8Config, ...] = (
        STATIC_FULL_RANGE + STATIC_PORTABLE + FULL_RANGE + PORTABLE + EXTRA
    )
    return {c.name: c for c in configs}


def configs_by_name(names: Sequence[str]) -> list[AnyInt8Config]:
    """The named configurations, in order; an unknown name is an error listing the known."""
    known = all_configs()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgumentError(
            "int8_configs", f"unknown configuration(s) {unknown}; known: {', '.join(known)}"
        )
    return [known[n] for n in names]


def search_list(
    mode: str = "auto", kernels: str | None = None, kind: str = "dynamic"
) -> tuple[AnyInt8Config, ...]:
    """The configurations of ``kind`` (``"dynamic"`` or ``"static"``) to try, in order (see
    the module docstring).

    ``mode``: ``"auto"`` (by this CPU's int8 kernels), ``"all"`` (full-range first, then
    portable) or ``"portable"`` (portable only). ``kernels`` overrides the detected family."""
    if mode not in SEARCH_MODES:
        raise InvalidArgumentError(
            "int8_search", f"{mode!r} is not one of {', '.join(SEARCH_MODES)}"
        )
    if kind not in KINDS:
        raise InvalidArgumentError("int8", f"{kind!r} is not one of {', '.join(KINDS)}")
    if mode == "auto":
        from explorank.engine.cpu import int8_kernels

        mode = "portable" if (kernels or int8_kernels()) == "avx2" else "all"
    full: tuple[AnyInt8Config, ...]
    portable: tuple[AnyInt8Config, ...]
    full, portable = (
        (STATIC_FULL_RANGE, STATIC_PORTABLE) if kind == "static" else (FULL_RANGE, PORTABLE)
    )
    return portable if mode == "portable" else full + portable


def nodes_by_role(model_path: Path) -> dict[str, list[str]]:
    """Names of the quantizable nodes of a fused BERT graph, grouped by :data:`ROLES`."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def feeds_gelu(tensor: str, depth: int = 2) -> bool:
        for c in consumers.get(tensor, []):
            if c.op_type in _GELU_OPS:
                return True
            if depth > 0 and c.op_type == "Add" and feeds_gelu(c.output[0], depth - 1):
                return True  # unfused MatMul -> Add(bias) -> Gelu
        return False

    def feeds_attention(tensor: str, depth: int = 1) -> bool:
        for c in consumers.get(tensor, []):
            if c.op_type == "MultiHeadAttention":
                return True
            if depth > 0 and c.op_type == "Add" and feeds_attention(c.output[0], depth - 1):
                return True  # MatMul -> Add(bias) -> MultiHeadAttention
        return False

    roles: dict[str, list[str]] = {r: [] for r in ROLES}
    for node in graph.node:
        if node.op_type in ("EmbedLayerNormalization",):
            roles["embedding"].append(node.name)
        elif node.op_type == "Attention":
            roles["attention"].append(node.name)
        elif node.op_type == "MatMul":
            src = producer.get(node.input[0])
            if src is not None and src.op_type in _GELU_OPS:
                roles["ffn_out"].append(node.name)
            elif src is not None and src.op_type in ("Attention", "MultiHeadAttention"):
                roles["attention_out"].append(node.name)
            elif feeds_gelu(node.output[0]):
                roles["ffn_in"].append(node.name)
            elif feeds_attention(node.output[0]):
                roles["qkv"].append(node.name)
    return roles


def quantize(src: Path, dst: Path, config: Int8Config) -> list[str]:
    """Write ``dst`` = ``src`` dynamically quantized per ``config``; return the node names
    kept fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    roles = nodes_by_role(src)
    excluded = sorted({name for role in config.keep_fp32 for name in roles[role]})
    # The quantizer logs one INFO line per tensor and a generic "consider pre-processing" warning
    # on the root logger; keep the export log readable (errors still surface as exceptions).
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QUInt8 if config.weight_type == "uint8" else QuantType.QInt8,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            nodes_to_exclude=excluded,
            extra_options={
                "MatMulConstBOnly": True,
                # Contrib ops (Attention, SkipLayerNormalization) defeat ONNX shape inference; their
                # outputs are float, which is what the quantizer needs to know.
                "DefaultTensorType": onnx.TensorProto.FLOAT,
            },
        )
    finally:
        logging.disable(previous)
    return excluded


@dataclass
class Sources:
    """What the quantizers start from.

    ``fused``: the bundle's fp32 encoder (``Attention`` fused), which dynamic configurations
    quantize. ``raw``: the unfused export, which static configurations fuse their own way
    (``attention="mha"``). ``calibration``: token ids of the calibration texts (static only;
    never in a gate's held-out sets)."""

    fused: Path
    raw: Path | None
    num_heads: int
    hidden_size: int
    calibration: Sequence[Sequence[int]]
    workdir: Path
    _graphs: dict[str, Path] = field(default_factory=dict)

    def graph(self, attention: str) -> Path:
        """The fp32 graph a static configuration quantizes (fused once per kind)."""
        if attention == "fused" or self.raw is None:
            return self.fused
        if attention not in self._graphs:
            from explorank.export.optimize import optimize_encoder

            out = Path(self.workdir) / f"encoder.{attention}.onnx"
            optimize_encoder(
                self.raw,
                out,
                num_heads=self.num_heads,
                hidden_size=self.hidden_size,
                multi_head_attention=attention == "mha",
            )
            self._graphs[attention] = out
        return self._graphs[attention]


def quantize_static_config(src: Sources, dst: Path, config: StaticInt8Config) -> list[str]:
    """Write ``dst``: ``config`` applied to the static graph of ``src``; returns the node
    names kept fp32."""
    from explorank.export import static_int8

    graph = src.graph(config.attention)
    names = static_int8.graph_input_names(graph)
    batches = list(static_int8.feeds(src.calibration, names, batch_size=1))
    if not batches:
        raise ExportError("static INT8 needs calibration texts; none were given")
    roles = nodes_by_role(graph)
    if config.smooth:
        smoothed = Path(src.workdir) / f"{dst.stem}.smoothed.onnx"
        stats = list(static_int8.feeds(src.calibration, names, batch_size=16))
        targets = [n for role in config.smooth for n in roles[role]]
        static_int8.smooth(graph, smoothed, targets, stats, alpha=config.smooth_alpha)
        graph = smoothed
    excluded = sorted({name for role in config.keep_fp32 for name in roles[role]})
    static_int8.quantize_qdq(
        graph,
        dst,
        batches,
        nodes_to_exclude=excluded,
        reduce_range=config.reduce_range,
        weight_type=config.weight_type,
        activation_type=config.activation_type,
        per_channel=config.per_channel,
        workdir=Path(src.workdir),
    )
    if graph != src.graph(config.attention):
        graph.unlink(missing_ok=True)
    return excluded


def build(src: Sources, dst: Path, config: AnyInt8Config) -> list[str]:
    """Quantize per ``config`` (either kind) into ``dst``; return the nodes kept fp32."""
    if isinstance(config, StaticInt8Config):
        return quantize_static_config(src, dst, config)
    return quantize(src.fused, dst, config)


#: ``evaluate(path)`` -> metrics per gate set (``"catalog"``, ``"held_out_catalog"``, ...).
Evaluate = Callable[[Path], Mapping[str, Mapping[str, float]]]


def _attempt(
    config: AnyInt8Config,
    results: Mapping[str, Mapping[str, float]],
    tolerances: Mapping[str, float],
    seconds: float,
) -> tuple[dict[str, Any], list[str]]:
    missed = [
        f"{name}: {miss}" for name, m in results.items() for miss in parity.misses(m, tolerances)
    ]
    attempt: dict[str, Any] = {
        "name": config.name,
        "kind": config.kind,
        "portable": config.portable,
        "passed": not missed,
        "seconds": round(seconds, 2),
    }
    catalog = results.get("catalog", {})
    for key in ("min_cosine", "mean_cosine", "top10_overlap"):
        if key in catalog:
            attempt[key] = catalog[key]
    attempt["held_out"] = {
        name: {k: m[k] for k in ("n", "min_cosine", "top10_overlap") if k in m}
        for name, m in results.items()
        if name != "catalog"
    }
    return attempt, missed


def search(
    src: Sources,
    dst: Path,
    *,
    evaluate: Evaluate,
    tolerances: Mapping[str, float],
    configs: Sequence[AnyInt8Config],
    search: str = "auto",
    stop_at_first: bool = True,
) -> list[tuple[dict[str, Any], dict[str, Any], Path]]:
    """Try ``configs`` in order; every gate set of ``evaluate`` must pass ``tolerances``.

    Returns ``[(int8_config, parity_entry, path)]`` for the configurations kept: the first that
    passes (``stop_at_first``), or every one that passes. ``dst`` names the first kept file;
    the others go next to it as ``<stem>.<config name>.onnx``. Raises :class:`Int8GateError`
    (carrying every attempt) when none passes.
    """
    from explorank.engine.cpu import cpu_description

    cpu = cpu_description()
    attempts: list[dict[str, Any]] = []
    kept: list[tuple[dict[str, Any], dict[str, Any], Path]] = []
    for config in configs:
        candidate = Path(src.workdir) / f"int8_{config.name}.onnx"
        t0 = time.perf_counter()
        excluded = build(src, candidate, config)
        results = evaluate(candidate)
        attempt, missed = _attempt(config, results, tolerances, time.perf_counter() - t0)
        attempts.append(attempt)
        log.info(
            "int8 %s (%s): %s -> %s",
            config.name,
            config.kind,
            "; ".join(
                f"{name} min cosine {m['min_cosine']:.4f} top-10 {m['top10_overlap']:.3f}"
                for name, m in results.items()
            ),
            "pass" if not missed else "miss (" + "; ".join(missed) + ")",
        )
        if missed:
            candidate.unlink(missing_ok=True)
            continue
        path = Path(dst) if not kept else Path(dst).with_suffix(f".{config.name}.onnx")
        shutil.move(str(candidate), str(path))
        chosen = {**asdict(config), "kind": config.kind, "portable": config.portable}
        for key in ("keep_fp32", "smooth"):
            if key in chosen:
                chosen[key] = list(chosen[key])
        chosen.update(
            {
                "activations": f"static {config.activation_type} (calibrated)"
                if isinstance(config, StaticInt8Config)
                else "dynamic uint8",
                "nodes_kept_fp32": excluded,
                "search": search,
                "gated_on": cpu,
                "attempts": list(attempts),
            }
        )
        entry = parity.gate("int8", results["catalog"], tolerances)
        entry["held_out"] = {
            name: {**m, "passed": True} for name, m in results.items() if name != "catalog"
        }
        kept.append((chosen, entry, path))
        if stop_at_first:
            break
    if kept:
        return kept
    detail = "; ".join(
        f"{a['name']}: min_cosine {a.get('min_cosine', float('nan')):.4f}, top10_overlap "
        f"{a.get('top10_overlap', float('nan')):.3f}"
        + "".join(
            f", {name} {h['min_cosine']:.4f}/{h['top10_overlap']:.3f}"
            for name, h in a["held_out"].items()
        )
        for a in attempts
    )
    kinds = "/".join(sorted({c.kind for c in configs}))
    raise Int8GateError(
        f"parity gate failed for int8 ({kinds}): no quantization configuration reached "
        f"min_cosine >= {tolerances.get('min_cosine')} and top10_overlap >= "
        f"{tolerances.get('top10_overlap')} on the catalog and on held-out texts on this CPU "
        f"({cpu['int8_kernels']} int8 kernels) ({detail}); export with --precision fp32 to "
        "skip int8",
        attempts,
        cpu,
    )


class Int8GateError(ParityError):
    """No INT8 configuration passed the gate; ``attempts`` holds each one's numbers."""

    def __init__(self, message: str, attempts: list[dict[str, Any]], cpu: dict[str, Any]):
        super().__init__(message)
        self.attempts = attempts
        self.cpu = cpu
