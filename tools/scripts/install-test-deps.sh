#!/usr/bin/env bash
# install-test-deps.sh: what CI needs beyond the Rust toolchain, installed if missing (running
# it again does nothing): `promtool`, which checks the node's and the controller's /metrics
# (tests/operations.rs), and `cargo-fuzz`, which builds and runs the fuzz targets
# (tools/fuzz/run.sh), from crates.io.
#
# promtool comes from Debian's `prometheus` package (there is no package of promtool alone).
# Only the promtool binary is taken from it, into /usr/local/bin: installing the package
# would also bring the Prometheus server, its web assets, and a service that starts on
# :9090 on machines that run services. Needs root and apt (Debian or Ubuntu).
#
#   tools/scripts/install-test-deps.sh
set -euo pipefail

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz --version 0.13.2
fi
if command -v promtool >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "promtool is missing: install it (Debian/Ubuntu package prometheus, or a release from" >&2
    echo "https://prometheus.io/download/) or run this script as root on Debian/Ubuntu" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# A machine whose package lists were never fetched knows no package to download.
apt-get download prometheus >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get download prometheus >/dev/null
}
dpkg-deb -x prometheus_*.deb root
install -m 0755 root/usr/bin/promtool /usr/local/bin/promtool
promtool --version | head -n 1
