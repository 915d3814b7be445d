"""Command lines for running explorank modules in a subprocess with this interpreter.

``python -m explorank`` puts the current directory first on ``sys.path``, so a directory
that holds a folder named ``explorank`` (a clone's parent, say) shadows the installed
package and the subprocess dies at import. :func:`module_command` starts the module
without the current directory on ``sys.path`` (``-P`` on Python ≥ 3.11; an equivalent
bootstrap on 3.10). Unlike ``-I`` it keeps ``PYTHONPATH`` and the user site-packages,
where explorank may be installed.
"""

from __future__ import annotations

import sys

__all__ = ["module_command"]

# Python 3.10 has no -P: drop the '' (current directory) that -c puts first on sys.path,
# then run the module as __main__ with the remaining arguments.
_BOOTSTRAP = (
    "import runpy, sys; del sys.path[0]; del sys.argv[0]; "
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` that the current directory cannot shadow."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", _BOOTSTRAP, module, *args]
