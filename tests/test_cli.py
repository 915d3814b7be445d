from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from explorank.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_every_command_has_help() -> None:
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name


def test_serve_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[batching]\nmax_batch_size = 0\n")
    assert main(["serve", "--config", str(cfg), "--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "batching.max_batch_size" in err


def test_serve_unknown_setting_suggests_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORANK__BATCHING__MAX_QUEUE_DELAY", "5")
    assert main(["serve", "--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "batching.max_queue_delay: unknown setting (got '5')" in err
    assert "did you mean 'batching.max_queue_delay_ms'?" in err


def test_serve_missing_bundle_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["serve", "--bundle", str(tmp_path / "nope"), "--port", "0", "--metrics-port", "0"]
    assert main(args) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_rank_without_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rank", "--address", "127.0.0.1:1", "--timeout", "2"])
    assert code == 1
    assert "error" in capsys.readouterr().err.lower()


def test_engine_imports_without_torch() -> None:
    """The serving path must not import torch or transformers."""
    code = (
        "import sys; import explorank.engine.server, explorank.engine.pipeline, explorank.cli.serve; "
        "import explorank.plugins.manager; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_parity_tolerance_flag_parses_and_rejects_garbage() -> None:
    from explorank.cli.export import _tolerances
    from explorank.errors import InvalidArgumentError

    assert _tolerances(
        ["int8.min_cosine=0.95", "int8.top10_overlap=0.8", "fp32.max_abs_diff=1e-3"]
    ) == {
        "int8": {"min_cosine": 0.95, "top10_overlap": 0.8},
        "fp32": {"max_abs_diff": 1e-3},
    }
    for bad in ("int8.min_cosine", "min_cosine=0.9", "int8.min_cosine=high"):
        with pytest.raises(InvalidArgumentError, match="parity-tolerance"):
            _tolerances([bad])
