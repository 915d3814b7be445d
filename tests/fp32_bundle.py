"""An fp32-only tiny bundle for tests that need a served bundle but not the INT8 encoder.

Test files wrap :func:`fp32_bundle_for` in a session fixture; the bundle is exported once per
session (a few seconds) from the ``tiny_model_dir`` and ``tiny_catalog`` fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_built: dict[tuple[Path, Path], Path] = {}


def fp32_bundle_for(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, catalog: Path
) -> Path:
    key = (model_dir, catalog)
    if key not in _built:
        from explorank.export.pipeline import export_bundle

        out = tmp_path_factory.mktemp("fp32_bundle") / "bundle"
        export_bundle(
            out,
            model_dir=model_dir,
            catalog=catalog,
            precisions=("fp32",),
            tensorrt="off",
            progress=False,
        )
        _built[key] = out
    return _built[key]
