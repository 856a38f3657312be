#!/usr/bin/env bash
# The Debian packages the test suite runs for real: a browser for the page tests, espeak-ng for
# speech, systemd-analyze to verify the service unit. `make test` calls this first. As root with
# apt-get (CI, a fresh box) it installs what is missing; otherwise it names the command to run.
set -euo pipefail
# binary:package
needs=(chromium:chromium espeak-ng:espeak-ng systemd-analyze:systemd git:git)
missing=()
for pair in "${needs[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages the tests use: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "warning: the tests that need ${missing[*]} will be skipped;" \
       "install them with: sudo apt-get install ${missing[*]}" >&2
fi
