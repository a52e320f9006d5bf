#!/usr/bin/env bash
# Builds the upstream Kubernetes control plane from source, through the Go module proxy
# (no prebuilt binaries can be downloaded on these machines), into a cache keyed by
# version. Idempotent: when the cache holds every binary it prints where they are and
# exits at once.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                                                              (go.etcd.io/etcd/server/v3)
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every k8s.io staging
# module with a path inside its own repository. A small wrapper module requires it and
# replaces each staging module with the version published for the same release
# (v1.37.2 pairs with v0.37.2). etcd's server module has the same kind of local replaces,
# so it gets a wrapper of its own (separate, so the two dependency graphs never meet).
#
# Environment:
#   ADAMW_KUBE_CACHE   cache root (default ~/.cache/adamw-operator)
#   KUBE_VERSION       k8s.io/kubernetes release (default below; the newest the proxy
#                      serves that builds with Go 1.26)
#   ETCD_VERSION       go.etcd.io/etcd release (default below)
# Prints, last, the directory holding the binaries.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
CACHE="${ADAMW_KUBE_CACHE:-$HOME/.cache/adamw-operator}"
KUBE_DIR="$CACHE/kubernetes-$KUBE_VERSION"
ETCD_DIR="$CACHE/etcd-$ETCD_VERSION"
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
# Go >= 1.26 is what k8s.io/kubernetes v1.37 declares; etcd v3.7 asks for go1.26.10
# as its toolchain, which the proxy serves, but 1.26.x builds it: stay on the local Go.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED="${CGO_ENABLED:-0}"

fail() {
    echo "install_kubernetes: step '$1' failed." >&2
    echo "  see the log: $2" >&2
    echo "  retry with:  bash scripts/install_kubernetes.sh   (or: make cluster)" >&2
    exit 1
}

have_all() {
    for c in "${KUBE_CMDS[@]}"; do [ -x "$KUBE_DIR/bin/$c" ] || return 1; done
    [ -x "$ETCD_DIR/bin/etcd" ]
}

if have_all; then
    echo "$CACHE/bin"
    exit 0
fi

command -v go >/dev/null 2>&1 || {
    echo "install_kubernetes: 'go' is not on PATH; install Go >= 1.26 (this machine kind ships it at /usr/local/go/bin)" >&2
    exit 1
}
mkdir -p "$KUBE_DIR/bin" "$ETCD_DIR/bin" "$CACHE/bin"
TIMEFMT="%e s wall, %M KB peak RSS"

# ---- Kubernetes -----------------------------------------------------------------------
if ! (for c in "${KUBE_CMDS[@]}"; do [ -x "$KUBE_DIR/bin/$c" ] || exit 1; done); then
    src="$KUBE_DIR/src"
    log="$KUBE_DIR/build.log"
    mkdir -p "$src"
    : >"$log"
    echo "install_kubernetes: building Kubernetes $KUBE_VERSION from the Go module proxy (cold: tens of minutes on 2 cores; log: $log)" >&2
    staging_minor="v0.${KUBE_VERSION#v1.}"
    # The staging modules, read from k8s.io/kubernetes's own go.mod.
    modfile="$(cd "$src" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" 2>>"$log" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')" \
        || fail "download k8s.io/kubernetes@$KUBE_VERSION" "$log"
    [ -n "$modfile" ] || fail "download k8s.io/kubernetes@$KUBE_VERSION" "$log"
    {
        echo "module adamw-operator/kubernetes-build"
        echo
        echo "go 1.26.0"
        echo
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        echo
        echo "replace ("
        sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$staging_minor"'#p' "$modfile"
        echo ")"
    } >"$src/go.mod"
    {
        echo "//go:build tools"
        echo
        echo "// Package tools pins the upstream commands this module builds."
        echo "package tools"
        echo
        echo "import ("
        for c in "${KUBE_CMDS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
        echo ")"
    } >"$src/tools.go"
    (cd "$src" && go mod tidy >>"$log" 2>&1) || fail "go mod tidy (Kubernetes $KUBE_VERSION wrapper module)" "$log"
    for c in "${KUBE_CMDS[@]}"; do
        [ -x "$KUBE_DIR/bin/$c" ] && continue
        echo "install_kubernetes:   go build $c" >&2
        (cd "$src" && /usr/bin/time -f "$c: $TIMEFMT" -a -o "$KUBE_DIR/build-times.txt" \
            go build -trimpath -ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${KUBE_VERSION#v1.}" \
            -o "$KUBE_DIR/bin/$c.tmp" "k8s.io/kubernetes/cmd/$c" >>"$log" 2>&1) \
            || fail "go build k8s.io/kubernetes/cmd/$c@$KUBE_VERSION" "$log"
        mv "$KUBE_DIR/bin/$c.tmp" "$KUBE_DIR/bin/$c"
    done
fi

# ---- etcd -----------------------------------------------------------------------------
if [ ! -x "$ETCD_DIR/bin/etcd" ]; then
    src="$ETCD_DIR/src"
    log="$ETCD_DIR/build.log"
    mkdir -p "$src"
    : >"$log"
    echo "install_kubernetes: building etcd $ETCD_VERSION from the Go module proxy (log: $log)" >&2
    {
        echo "module adamw-operator/etcd-build"
        echo
        echo "go 1.26.0"
        echo
        echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
        echo
        echo "replace ("
        for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
            echo "	go.etcd.io/etcd/$m => go.etcd.io/etcd/$m $ETCD_VERSION"
        done
        echo ")"
    } >"$src/go.mod"
    printf '//go:build tools\n\n// Package tools pins the etcd server this module builds.\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$src/tools.go"
    (cd "$src" && go mod tidy >>"$log" 2>&1) || fail "go mod tidy (etcd $ETCD_VERSION wrapper module)" "$log"
    (cd "$src" && /usr/bin/time -f "etcd: $TIMEFMT" -a -o "$ETCD_DIR/build-times.txt" \
        go build -trimpath -ldflags="-s -w" -o "$ETCD_DIR/bin/etcd.tmp" go.etcd.io/etcd/server/v3 >>"$log" 2>&1) \
        || fail "go build go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$log"
    mv "$ETCD_DIR/bin/etcd.tmp" "$ETCD_DIR/bin/etcd"
fi

# One folder of links, so callers need one path.
for c in "${KUBE_CMDS[@]}"; do ln -sfn "$KUBE_DIR/bin/$c" "$CACHE/bin/$c"; done
ln -sfn "$ETCD_DIR/bin/etcd" "$CACHE/bin/etcd"
cat "$KUBE_DIR/build-times.txt" "$ETCD_DIR/build-times.txt" 2>/dev/null >&2 || true
echo "$CACHE/bin"
