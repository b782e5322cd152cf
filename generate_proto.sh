#!/usr/bin/env bash
# Regenerates every file derived from proto/: Python (+ .pyi stubs) for the adapter and Go for
# maistro. The output is committed; CI runs this script and fails if anything changed.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.1
TOOLS_BIN="$PWD/.tools/bin"

"$VENV/bin/buf" lint

# Python: generated as adapter/gen/inference/v1/*; protoc writes absolute imports of the proto
# package ("from inference.v1 import ..."), which we point at the adapter's package.
rm -rf adapter/gen
mkdir -p adapter/gen
# Type stubs come from mypy-protobuf (messages and the gRPC stubs), so `mypy --strict` sees types.
"$PY" -m grpc_tools.protoc -I proto \
  --plugin=protoc-gen-mypy="$VENV/bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$VENV/bin/protoc-gen-mypy_grpc" \
  --python_out=adapter/gen --grpc_python_out=adapter/gen \
  --mypy_out=adapter/gen --mypy_grpc_out=adapter/gen \
  inference/v1/inference.proto >/dev/null
sed -i 's/^from inference\.v1 import/from adapter.gen.inference.v1 import/' \
  adapter/gen/inference/v1/*.py adapter/gen/inference/v1/*.pyi
for d in adapter/gen adapter/gen/inference adapter/gen/inference/v1; do
  echo '"""Generated from proto/ by generate_proto.sh; do not edit."""' > "$d/__init__.py"
done

# Go: protoc plugins pinned and installed into .tools/bin.
mkdir -p "$TOOLS_BIN"
[ -x "$TOOLS_BIN/protoc-gen-go" ] && "$TOOLS_BIN/protoc-gen-go" --version | grep -q "${PROTOC_GEN_GO_VERSION}" ||
  GOBIN="$TOOLS_BIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
[ -x "$TOOLS_BIN/protoc-gen-go-grpc" ] && "$TOOLS_BIN/protoc-gen-go-grpc" --version | grep -q "${PROTOC_GEN_GO_GRPC_VERSION#v}" ||
  GOBIN="$TOOLS_BIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"
# The Go package is internal to maistro (maistro/internal/gen/inference): the client package's
# types are the public API; the proto's go_package names that path.
GO_OUT=maistro/internal/gen/inference
rm -rf "$GO_OUT"
mkdir -p "$GO_OUT"
"$PY" -m grpc_tools.protoc -I proto \
  --plugin=protoc-gen-go="$TOOLS_BIN/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$TOOLS_BIN/protoc-gen-go-grpc" \
  --go_out="$GO_OUT" --go_opt=paths=source_relative \
  --go-grpc_out="$GO_OUT" --go-grpc_opt=paths=source_relative \
  inference/v1/inference.proto >/dev/null
# paths=source_relative keeps the proto's directories; flatten them into the Go package folder.
mv "$GO_OUT"/inference/v1/*.go "$GO_OUT"/
rm -rf "$GO_OUT"/inference
echo "generated: adapter/gen/inference/v1, $GO_OUT"
