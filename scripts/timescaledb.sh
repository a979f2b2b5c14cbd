#!/usr/bin/env bash
# Builds TimescaleDB from a source directory and installs it into Debian's PostgreSQL 15,
# for machines whose package sources have no TimescaleDB (Debian 12's have none).
# Usage: scripts/timescaledb.sh SOURCE_DIR   (a checkout or archive of release 2.28.3,
# the last for PostgreSQL 15; about 5 minutes on 2 cores). Afterwards the local scripts
# preload it in the clusters they start and Sluice stores readings in hypertables.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="${1:?usage: scripts/timescaledb.sh SOURCE_DIR (TimescaleDB 2.28.3 sources)}"
[ -x "$SRC/bootstrap" ] || { echo "$SRC has no ./bootstrap: not a TimescaleDB source tree" >&2; exit 2; }
version="$(sed -n 's/^version *= *//p' "$SRC/version.config" 2>/dev/null | head -1 || true)"
[ "$version" = "$TIMESCALEDB_VERSION" ] ||
  log "warning: $SRC is TimescaleDB ${version:-of unknown version}; $TIMESCALEDB_VERSION is the one tested with PostgreSQL 15"

pkgs=()
[ -x "$PG_BIN/pg_config" ] || pkgs+=(postgresql-server-dev-15)
[ -f /usr/include/postgresql/15/server/postgres.h ] || pkgs+=(postgresql-server-dev-15)
command -v cmake >/dev/null || pkgs+=(cmake)
command -v cc >/dev/null || pkgs+=(build-essential)
[ -f /usr/include/openssl/ssl.h ] || pkgs+=(libssl-dev)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# Built in a copy, without any earlier build/ of the source tree (bootstrap would keep it).
BUILD="$ROOT/.data/timescaledb-build"
[ "$(cd "$SRC" && pwd -P)" != "$(mkdir -p "$BUILD" && cd "$BUILD" && pwd -P)" ] ||
  { echo "give the source directory, not $BUILD" >&2; exit 2; }
rm -rf "$BUILD" && mkdir -p "$BUILD" && cp -a "$SRC/." "$BUILD/" && rm -rf "$BUILD/build"
cd "$BUILD"
log "configuring TimescaleDB $version"
BUILD_FORCE_REMOVE=true ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
  -DPG_CONFIG="$PG_BIN/pg_config" >/dev/null
log "compiling (about 5 minutes on 2 cores)"
make -C build -j"$(nproc)" >/dev/null
make -C build install >/dev/null
log "installed: $(ls "$("$PG_BIN/pg_config" --pkglibdir)"/timescaledb-*.so | head -1)"
log "clusters need shared_preload_libraries = 'timescaledb' (the local scripts set it)"
