#!/usr/bin/env bash
# Regenerates the Go and TypeScript client code from proto/ with the pinned
# generators (clients/versions.env, clients/typescript/package-lock.json).
#
#   clients/gen.sh                 regenerate into the work tree
#   clients/gen.sh --out DIR       write to DIR/clients/... instead (staleness tests)
#   clients/gen.sh --only go|ts    one language only
#
# Tools come from `make clients-install`: buf and protoc-gen-es from
# clients/typescript/node_modules, protoc-gen-go(-grpc) from clients/go/.bin.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT=""
ONLY="all"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n "2,10p" "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gen.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$ONLY" in all|go|ts) ;; *) echo "gen.sh: --only takes go, ts or all" >&2; exit 2 ;; esac

# shellcheck source=versions.env
source "$ROOT/clients/versions.env"
GO_MODULE="github.com/gpt-grpc/gpt-grpc/clients/go"
TS_DIR="$ROOT/clients/typescript"
GOBIN_DIR="$ROOT/clients/go/.bin"
BUF="$TS_DIR/node_modules/.bin/buf"
PROTOC_GEN_ES="$TS_DIR/node_modules/.bin/protoc-gen-es"

die() { echo "gen.sh: $*" >&2; exit 1; }
need_version() { # tool, expected "name version" line
  local tool="$1" want="$2" got
  [[ -x "$tool" ]] || die "$tool is missing: run 'make clients-install'"
  got="$("$tool" --version 2>&1 | head -n1)"
  [[ "$got" == "$want" ]] || die "$tool is '$got', want '$want': run 'make clients-install'"
}
npm_pin() { node -e 'const p=require(process.argv[1]);process.stdout.write((p.devDependencies||{})[process.argv[2]]||(p.dependencies||{})[process.argv[2]]||"")' "$TS_DIR/package.json" "$1"; }

need_version "$BUF" "$(npm_pin @bufbuild/buf)"
if [[ "$ONLY" != ts ]]; then
  need_version "$GOBIN_DIR/protoc-gen-go" "protoc-gen-go $PROTOC_GEN_GO_VERSION"
  need_version "$GOBIN_DIR/protoc-gen-go-grpc" "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}"
  grep -Eq "^[[:space:]]*(require[[:space:]]+)?google.golang.org/protobuf $PROTOC_GEN_GO_VERSION( //.*)?\$" "$ROOT/clients/go/go.mod" ||
    die "clients/go/go.mod must require google.golang.org/protobuf $PROTOC_GEN_GO_VERSION (the protoc-gen-go version)"
fi
if [[ "$ONLY" != go ]]; then
  need_version "$PROTOC_GEN_ES" "protoc-gen-es v$(npm_pin @bufbuild/protoc-gen-es)"
  [[ "$(npm_pin @bufbuild/protobuf)" == "$(npm_pin @bufbuild/protoc-gen-es)" ]] ||
    die "@bufbuild/protobuf and @bufbuild/protoc-gen-es must have the same version in package.json"
fi

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

# Inline buf.gen templates (v2). Paths are relative to the --out base ($STAGE).
GO_TEMPLATE=$(cat <<JSON
{"version": "v2", "plugins": [
  {"local": "$GOBIN_DIR/protoc-gen-go", "out": "clients/go", "opt": ["module=$GO_MODULE"]},
  {"local": "$GOBIN_DIR/protoc-gen-go-grpc", "out": "clients/go", "opt": ["module=$GO_MODULE"]}
]}
JSON
)
TS_TEMPLATE=$(cat <<JSON
{"version": "v2", "plugins": [
  {"local": "$PROTOC_GEN_ES", "out": "clients/typescript/src/gen", "opt": ["target=ts", "import_extension=js"]}
]}
JSON
)

cd "$ROOT"
if [[ "$ONLY" != ts ]]; then
  "$BUF" generate proto --template "$GO_TEMPLATE" -o "$STAGE"
fi
if [[ "$ONLY" != go ]]; then
  "$BUF" generate proto --template "$TS_TEMPLATE" -o "$STAGE"
  # google.rpc error details (vendored from googleapis) for ConnectError.findDetails.
  "$BUF" generate clients/typescript/proto --template "$TS_TEMPLATE" -o "$STAGE"
fi

# Generated roots: replaced whole, so files of removed protos do not linger.
ROOTS=()
[[ "$ONLY" != ts ]] && ROOTS+=("clients/go/gptgrpcv1")
[[ "$ONLY" != go ]] && ROOTS+=("clients/typescript/src/gen")
DEST="${OUT:-$ROOT}"
for r in "${ROOTS[@]}"; do
  [[ -d "$STAGE/$r" ]] || die "nothing was generated into $r"
  rm -rf "${DEST:?}/$r"
  mkdir -p "$(dirname "$DEST/$r")"
  cp -R "$STAGE/$r" "$DEST/$r"
done
echo "gen.sh: generated ${ROOTS[*]} into ${DEST}"
