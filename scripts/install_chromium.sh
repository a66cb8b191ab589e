#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the leaderboard page tests (tests/test_leaderboard.py), when missing.
# CI (.ci/run) calls it; without root or apt-get it says so and the page tests skip with that reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "Chromium/ChromeDriver missing and no root apt-get here: the page tests will skip" \
       "(install the Debian packages chromium and chromium-driver)"
  exit 0
fi
echo "installing chromium and chromium-driver (apt-get) for the leaderboard page tests"
if ! { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; then
  echo "apt-get could not install chromium: the page tests will skip"
fi
exit 0
