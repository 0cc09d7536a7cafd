#!/usr/bin/env bash
# Installs the Debian packages pantau needs when they are missing (as root), or says what to
# install (otherwise). Usage: ensure-system-deps.sh [python] [postgresql] [mosquitto] [chromium]
set -euo pipefail

missing=()
for want in "$@"; do
  case "$want" in
    python)
      if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi ;;
    postgresql)
      if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        missing+=(postgresql)
      fi ;;
    mosquitto)
      if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then missing+=(mosquitto); fi
      # mosquitto_pub/_sub: the README's first steps and the end-to-end tests use them.
      if ! command -v mosquitto_pub >/dev/null 2>&1; then missing+=(mosquitto-clients); fi ;;
    chromium)
      if ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi ;;
    *) echo "ensure-system-deps: unknown dependency '$want'" >&2; exit 2 ;;
  esac
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "pantau needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
