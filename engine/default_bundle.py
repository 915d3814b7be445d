"""The default bundle: the packaged all-MiniLM-L6-v2 + the embedded default catalog,
exported into the cache directory on first use (needs the ``export`` and ``demo`` extras
once; later runs only read it)."""

from __future__ import annotations

import fcntl
import logging
import time
from pathlib import Path

from explorank import __version__
from explorank.engine.bundle import read_manifest
from explorank.errors import BundleError, ConfigError
from explorank.paths import default_cache_dir

log = logging.getLogger("explorank.engine")


def default_bundle_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "bundles" / f"default-{__version__}"


def ensure_default_bundle(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Return the default bundle's directory, exporting it first when it is missing."""
    out = default_bundle_dir(cache_dir)
    try:
        read_manifest(out)
        return out
    except BundleError:
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        try:
            read_manifest(out)
            return out
        except BundleError:
            pass
        try:
            from explorank.export.pipeline import export_bundle
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"no bundle given and the default bundle {out} does not exist yet; building it needs "
                f"the export extras ({exc.name} is missing): pip install 'explorank[export,demo]', "
                f"or pass --bundle DIR"
            ) from exc
        log.info("building the default bundle (all-MiniLM-L6-v2 + default catalog) in %s ...", out)
        t0 = time.perf_counter()
        # INT8 is best effort here: a CPU on which no INT8 configuration passes still gets a
        # working (fp32) default bundle. The fp16 encoder is added where it can serve: on a
        # machine whose onnxruntime has the CUDA execution provider and a GPU (best effort too).
        from explorank.engine.backends.base import cuda_ep_usable

        precisions = ("fp32", "int8", "fp16") if cuda_ep_usable() else ("fp32", "int8")
        export_bundle(
            out,
            progress=progress,
            precisions=precisions,
            int8_required=False,
            fp16_required=False,
        )
        log.info("default bundle ready in %.0f s", time.perf_counter() - t0)
    return out
