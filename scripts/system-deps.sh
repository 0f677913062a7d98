#!/usr/bin/env bash
# Installs the Debian packages the tests use (Fashion-MNIST data, Chromium for browser tests) when running as
# root on Debian and they are missing. Elsewhere it only says what is missing; the tests skip what they can't do.
set -u
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "note: missing Debian packages ${missing[*]} (install them as root for the full test suite)" >&2
fi
