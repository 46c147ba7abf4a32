#!/usr/bin/env bash
# Install promtool, which the alerting-rule tests run on deploy/prometheus/.
#
#   tests/prometheus/install.sh
#
# Debian ships promtool inside its prometheus package (there is no package of
# promtool alone). apt-get runs only when the binary is missing; a machine
# that has it is left alone. Recommends are left out: the node exporter is
# not needed to check rules. Where an init system runs services, the
# package's own scripts may start a Prometheus server; the tests use
# promtool alone and never talk to it.
#
# PROMTOOL names the binary to look for (default /usr/bin/promtool, where the
# package puts it); a test of this script points it elsewhere.
set -euo pipefail

binary="${PROMTOOL:-/usr/bin/promtool}"

if [ -x "$binary" ]; then
    exit 0
fi

# Several test processes may ask at once; one installs, the others wait and
# then find the binary. apt-get would also refuse a second concurrent
# install (its own lock), so the install is serialised.
exec 9>"${TMPDIR:-/tmp}/rpcproxy-promtool-install.lock"
flock 9

if [ -x "$binary" ]; then
    exit 0
fi

# An empty "$sudo" must not change how a command is parsed: `env` makes the
# assignment a plain argument whether or not sudo is in front of it.
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing prometheus (for promtool)"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null

if [ ! -x "$binary" ]; then
    echo "prometheus installed, but $binary is missing" >&2
    exit 1
fi
echo "installed $binary"
