# Installs what Herald's scripts need, once; sourced by scripts/servers and scripts/demo.
# Debian packages through apt (as root, or through sudo), and a Python venv in
# .local/venv with Zaqar, oslo.messaging and their clients.

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
VENV="${HERALD_VENV:-$ROOT/.local/venv}"

DEBIAN_PACKAGES=(redis-server redis-tools rabbitmq-server libhiredis-dev librabbitmq-dev libsimdjson-dev libssl-dev pkg-config libcurl4-openssl-dev curl python3-venv)
# Pinned: the versions DESIGN.md's facts were checked against.
PYTHON_PACKAGES=("zaqar==23.0.1" "oslo.messaging==18.3.1" "python-zaqarclient==4.7.0" "websocket-client==1.9.2" "jsonschema==4.26.0" "redis>=5,<9" "oslo.context" "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" "gunicorn==23.0.0")

install_system_packages() {
    local missing=() pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        # python3-venv is only needed when python3 has no venv module of its own.
        if [ "$pkg" = python3-venv ] && python3 -c 'import venv, ensurepip' 2>/dev/null; then continue; fi
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    printf 'install: Debian packages: %s\n' "${missing[*]}" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "install: need root or sudo to install ${missing[*]}" >&2; return 1; }
        sudo="sudo"
    fi
    # The Debian packages would start their own servers through policy-rc.d-less init; forbid that.
    local policy=/usr/sbin/policy-rc.d created_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && created_policy=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -n "$created_policy" ] && $sudo rm -f "$policy"
    return 0
}

# install_venv DIR PACKAGES...: a venv at DIR holding exactly PACKAGES (a stamp file
# remembers what was installed, so a changed list installs again).
install_venv() {
    local dir="$1" stamp="$1/.herald-packages" want
    shift
    want="$*"
    if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
    printf 'install: Python venv %s with %s\n' "$dir" "$want" >&2
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
    echo "$want" > "$stamp"
}

install_python_venv() { install_venv "$VENV" "${PYTHON_PACKAGES[@]}"; }

# Keystone in a venv of its own (its oslo.* pins need not agree with Zaqar's).
KEYSTONE_VENV="${HERALD_KEYSTONE_VENV:-$ROOT/.local/keystone-venv}"
KEYSTONE_PACKAGES=("keystone==30.0.0")

install_keystone_venv() { install_venv "$KEYSTONE_VENV" "${KEYSTONE_PACKAGES[@]}"; }
