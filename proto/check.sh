#!/usr/bin/env bash
# Checks the gptgrpc.v1 contract with buf (pinned in clients/typescript/package-lock.json):
#
#   proto/check.sh            buf lint (STANDARD, proto/buf.yaml) and buf breaking (FILE)
#                             against the last released image, proto/releases/gptgrpc-v1.binpb
#   proto/check.sh release    rebuild that image from the current proto/ (do it when
#                             releasing, and commit it)
#
# Set BUF to use another buf binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUF="${BUF:-$ROOT/clients/typescript/node_modules/.bin/buf}"
RELEASE_IMAGE="proto/releases/gptgrpc-v1.binpb"

if [[ ! -x "$BUF" ]]; then
  echo "check.sh: $BUF is missing: run 'make clients-install'" >&2
  exit 1
fi
cd "$ROOT"

case "${1:-check}" in
  check)
    echo "buf lint proto"
    "$BUF" lint proto
    echo "buf breaking proto --against $RELEASE_IMAGE"
    "$BUF" breaking proto --against "$RELEASE_IMAGE"
    echo "proto check: OK"
    ;;
  release)
    "$BUF" lint proto
    "$BUF" build proto --exclude-source-info -o "$RELEASE_IMAGE"
    echo "wrote $RELEASE_IMAGE: commit it"
    ;;
  *)
    echo "usage: proto/check.sh [check|release]" >&2
    exit 2
    ;;
esac
