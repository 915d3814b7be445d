#!/usr/bin/env bash
# Regenerates the checked-in Python stubs from ranker.proto.
# tests/test_proto_stubs.py fails when the checked-in stubs differ from what this writes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
python -m grpc_tools.protoc -I "$here" --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here/explorank/v1/ranker.proto"
