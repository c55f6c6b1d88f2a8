# Sourced by tools/build-bundle and tools/build-e2e: the Go toolchain, the versions that
# go.mod pins, and the version stamps of Kubernetes' programs. The caller defines die().

# go_bin and go_version: $GO, else go on PATH, else /usr/local/go/bin/go.
find_go() {
    go_bin="${GO:-}"
    if [ -z "$go_bin" ]; then
        go_bin=$(command -v go || true)
        [ -n "$go_bin" ] || go_bin=/usr/local/go/bin/go
    fi
    [ -x "$go_bin" ] || die "no Go toolchain found (set GO=/path/to/go)"
    go_version=$("$go_bin" env GOVERSION) || die "cannot run $go_bin"
}

# modver GO.MOD MODULE: the version GO.MOD requires of MODULE (empty if none).
modver() {
    awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }
                   $1 == "require" && $2 == m { print $3; exit }' "$1"
}

x() { printf -- '-X %s=%s ' "$1" "$2"; }

# k8s_stamps VERSION: -X flags that make Kubernetes' programs report VERSION (what
# --version prints, and what the e2e suite compares with the server's).
k8s_stamps() {
    local minor=${1#v*.} major=${1#v} pkg
    minor=${minor%%.*}; major=${major%%.*}
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x "$pkg.gitVersion" "$1"
        x "$pkg.gitMajor" "$major"
        x "$pkg.gitMinor" "$minor"
        x "$pkg.gitTreeState" clean
        x "$pkg.gitCommit" ""  # module zips carry no commit id
    done
}
