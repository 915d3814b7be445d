"""explorank: fast BERT-based recommendation serving with exploration policies.

The distribution installs one import name, ``explorank``:

- ``explorank.export``     fine-tuning, ONNX/TensorRT export, bundles (needs the ``export`` extra)
- ``explorank.engine``     the gRPC serving engine and the CLI (never imports torch)
- ``explorank.plugins``    hook specs, plugin manager, built-in scorers/policies/stores
- ``explorank.benchmarks`` latency benchmarks, policy evaluation, off-policy estimators
- ``explorank.v1``         generated protobuf/gRPC stubs for ``explorank.v1.Ranker``

Plugin authors write ``from explorank import hookimpl``.
"""

from explorank.plugins.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
