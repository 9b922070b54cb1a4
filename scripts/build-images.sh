#!/usr/bin/env bash
# Builds the OCI images shoal/shoal-control-plane, shoal/shoal-proxy and shoal/shoal-proxy-init without a
# container daemon or a registry: each image is one layer assembled from scratch with umoci. The binaries are
# static (glibc, `-C target-feature=+crt-static`: no loader, no shared library), so the control plane's and the
# sidecar's images hold their binaries and a few files of /etc, nothing else: no shell, no libc, no package
# manager. Only the init container's image adds Debian's iptables (with its libraries and xtables extensions),
# which `shoal-proxy init` runs. The same contents as images/*/Containerfile, which need registry bases.
#
#   scripts/build-images.sh                          # the static release build, then the three images
#   scripts/build-images.sh --bin-dir DIR            # static binaries built already, e.g. the debug ones:
#       RUSTFLAGS="-C target-feature=+crt-static" cargo build --target x86_64-unknown-linux-gnu \
#         -p shoal-proxy -p shoal-control-plane --bins    → target/x86_64-unknown-linux-gnu/debug
#
# Output, rebuilt from nothing on every run (idempotent): target/images/oci (one OCI layout, a tag per image:
# shoal-control-plane-<version>, shoal-proxy-<version>, shoal-proxy-init-<version>) and
# target/images/<image>-<version>.tar (docker-archive, for `kind load image-archive`, `podman load`,
# `skopeo copy` to a registry). Each image is checked after the build: `umoci stat`, `skopeo inspect` (user,
# entrypoint, command, ports), and its binaries run inside its own root file system (chroot; `unshare -r` when
# not root): `--version` of each, `iptables --version` and `shoal-proxy init --dry-run` in the init image. As
# root, in network namespaces of their own: a real `shoal-proxy init` with each iptables backend; the control
# plane started in its image, asked by `shoalctl` from the same image through a name in /etc/hosts; the proxy
# started in its image, proxying a request to a name it resolves the same way (the static binaries' resolver).
#
# Needs umoci, skopeo, iptables, binutils (strip, readelf), iproute2 and python3 (Debian packages;
# `.ci/run` installs them). The init image carries this host's iptables and libraries: build on the Debian
# release it should resemble (Debian 12 here). x86_64 only (the image config says amd64).
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=""
while (($#)); do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    *) echo "usage: $0 [--bin-dir DIR]" >&2; exit 2 ;;
  esac
done

fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in umoci skopeo ldd strip readelf ip python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (Debian: apt-get install umoci skopeo binutils iproute2; .ci/run installs them)"
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || fail "no workspace version in Cargo.toml"

# The gnu target named explicitly, so the flag reaches the binaries but not build scripts and proc macros
# (which cannot be static). glibc ≥ 2.34 has the files and dns name services built in, so the static
# binaries resolve names from /etc/hosts and DNS without loading anything.
triple=x86_64-unknown-linux-gnu
if [ -z "$bin_dir" ]; then
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$triple" \
    -p shoal-proxy -p shoal-control-plane --bins
  bin_dir=${CARGO_TARGET_DIR:-target}/$triple/release
fi
for bin in shoal-proxy shoal-control-plane shoalctl; do
  [ -x "$bin_dir/$bin" ] || fail "$bin_dir/$bin not found or not executable"
  # A static(-pie) binary names no interpreter and no shared library.
  if readelf -l "$bin_dir/$bin" | grep -q 'program interpreter' || readelf -d "$bin_dir/$bin" | grep -q '(NEEDED)'; then
    fail "$bin_dir/$bin is dynamically linked; build static binaries: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --target $triple ... (or run this script without --bin-dir)"
  fi
done

out=target/images
layout=$out/oci
rm -rf "$out"
mkdir -p "$out"
umoci init --layout "$layout"

# Adds to the root file system $1 every shared library the files given (paths inside it) load, at the path
# ldd names (the library under the name it is loaded by, its symlinks resolved).
add_libs() {
  local root=$1 file lib
  shift
  for file in "$@"; do
    # `libx.so => /lib/.../libx.so (0x...)`, and the loader's own line `/lib64/ld-linux-x86-64.so.2 (0x...)`.
    while read -r lib; do
      [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done < <(ldd "$root$file" | awk '/=> \// {print $3} /^\t\// {print $1}')
  done
}

# Copies binary $2 of $bin_dir into /usr/local/bin of root file system $1 without its debug information
# (most of a debug build's size; the symbols stay, so backtraces keep function names).
add_bin() {
  strip --strip-debug -o "$1/usr/local/bin/$2" "$bin_dir/$2"
  chmod 0755 "$1/usr/local/bin/$2"
}

# Minimal /etc and directories every image has: passwd and group (so tools name the user), nsswitch.conf
# (names from /etc/hosts, then DNS: the kubelet writes both files), a writable /tmp, and Debian's merged /usr
# (/lib -> usr/lib, ...): iptables' libraries land where ldd found them whichever name it used, and paths
# compiled into it (/usr/lib/<arch>/xtables) hold what the host has there.
base_root() {
  local root=$1 user=$2 uid=$3 dir
  mkdir -p "$root/etc" "$root/tmp" "$root/dev" "$root/usr/local/bin"
  for dir in bin sbin lib lib64; do
    mkdir -p "$root/usr/$dir"
    ln -sfn "usr/$dir" "$root/$dir"
  done
  chmod 1777 "$root/tmp"
  if [ "$uid" = 0 ]; then
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
  else
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n%s:x:%s:%s:%s:/nonexistent:/usr/sbin/nologin\n' \
      "$user" "$uid" "$uid" "$user" >"$root/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" >"$root/etc/group"
  fi
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
}

# Creates tag $1 from the root file system $2 and the remaining arguments (umoci config flags).
make_image() {
  local tag=$1 root=$2
  shift 2
  umoci new --image "$layout:$tag"
  # One layer; --rootless records the files as owned by root whoever runs this (ownership in the image is
  # what the tar headers say: root, except what `chown` inside the layer would need, which nothing here does).
  umoci insert --rootless --image "$layout:$tag" "$root" /
  umoci config --image "$layout:$tag" --os linux --architecture amd64 \
    --author "shoal scripts/build-images.sh" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.title=${tag%-"$version"}" \
    --config.env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.workingdir / "$@"
  umoci gc --layout "$layout"
}

# Runs a command inside the root file system $1 (chroot; unprivileged users through a user namespace).
in_root() {
  local root=$1
  shift
  if [ "$(id -u)" = 0 ]; then chroot "$root" "$@"; else unshare -r chroot "$root" "$@"; fi
}

echo "== shoal-control-plane ($version)"
root=$out/rootfs-control-plane
base_root "$root" nonroot 65532
add_bin "$root" shoal-control-plane
add_bin "$root" shoalctl
make_image "shoal-control-plane-$version" "$root" \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/shoal-control-plane \
  --config.exposedports 15010/tcp --config.exposedports 15011/tcp \
  --config.exposedports 15014/tcp --config.exposedports 15017/tcp

echo "== shoal-proxy ($version)"
root=$out/rootfs-proxy
base_root "$root" shoal-proxy 1337
add_bin "$root" shoal-proxy
make_image "shoal-proxy-$version" "$root" \
  --config.user 1337:1337 \
  --config.entrypoint /usr/local/bin/shoal-proxy \
  --config.exposedports 15001/tcp --config.exposedports 15006/tcp --config.exposedports 15021/tcp

echo "== shoal-proxy-init ($version)"
root=$out/rootfs-proxy-init
base_root "$root" root 0
add_bin "$root" shoal-proxy
# Debian's multi-call binaries (nft and legacy backends) under the names init calls (--iptables /
# --ip6tables; `iptables` is the nft backend, as on Debian), their libraries, and the xtables extensions they
# dlopen (not in ldd's output).
command -v xtables-nft-multi >/dev/null || fail "iptables not installed (apt-get install iptables)"
nft=$(readlink -f "$(command -v xtables-nft-multi)")
legacy=$(readlink -f "$(command -v xtables-legacy-multi)")
install -D -m 0755 "$nft" "$root$nft"
install -D -m 0755 "$legacy" "$root$legacy"
add_libs "$root" "$nft" "$legacy"
for name in iptables ip6tables iptables-nft ip6tables-nft iptables-save ip6tables-save iptables-restore ip6tables-restore; do
  ln -sf "$nft" "$root/usr/sbin/$name"
done
for name in iptables-legacy ip6tables-legacy iptables-legacy-save iptables-legacy-restore; do
  ln -sf "$legacy" "$root/usr/sbin/$name"
done
xtables=$(readlink -f "$(dirname "$(ldd "$nft" | awk '/libxtables/ {print $3}')")/xtables")
[ -d "$xtables" ] || fail "xtables extensions not found at $xtables"
mkdir -p "$root$xtables"
cp -a "$xtables"/. "$root$xtables/"
for ext in "$root$xtables"/*.so; do add_libs "$root" "${ext#"$root"}"; done
# iptables takes its lock under /run (legacy backend).
mkdir -p "$root/run"
# Root: the injector runs it as uid 0 with NET_ADMIN and NET_RAW only.
make_image "shoal-proxy-init-$version" "$root" \
  --config.user 0:0 \
  --config.entrypoint /usr/local/bin/shoal-proxy \
  --config.cmd init

echo "== check"
# check TAG USER ENTRYPOINT CMD PORTS: the image's one layer and its configuration, then its docker-archive.
check() {
  local tag=$1 user=$2 entrypoint=$3 cmd=$4 ports=$5
  umoci stat --image "$layout:$tag" >"$out/$tag.stat"
  # One layer (the inserted root file system) and the configuration.
  [ "$(grep -c '^sha256:.* umoci insert ' "$out/$tag.stat")" = 1 ] || { cat "$out/$tag.stat"; fail "$tag: expected one layer"; }
  skopeo inspect --config "oci:$layout:$tag" >"$out/$tag.config.json"
  python3 - "$out/$tag.config.json" "$user" "$entrypoint" "$cmd" "$ports" <<'EOF' || fail "$tag: image config"
import json, sys
config = json.load(open(sys.argv[1]))["config"]
user, entrypoint, cmd, ports = sys.argv[2], [sys.argv[3]], sys.argv[4].split() or None, set(sys.argv[5].split())
problems = []
if config.get("User") != user: problems.append(f"User {config.get('User')!r}, expected {user!r}")
if config.get("Entrypoint") != entrypoint: problems.append(f"Entrypoint {config.get('Entrypoint')}, expected {entrypoint}")
if config.get("Cmd") != cmd: problems.append(f"Cmd {config.get('Cmd')}, expected {cmd}")
if set(config.get("ExposedPorts") or {}) != ports: problems.append(f"ExposedPorts {sorted(config.get('ExposedPorts') or {})}, expected {sorted(ports)}")
for p in problems: print(f"  {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
  skopeo copy --quiet "oci:$layout:$tag" "docker-archive:$out/$tag.tar:shoal/${tag%-"$version"}:$version"
  echo "$tag: user $user, entrypoint $entrypoint${cmd:+ $cmd}, ports ${ports:-none}; $(du -h "$out/$tag.tar" | cut -f1) docker-archive"
}
check "shoal-control-plane-$version" 65532:65532 /usr/local/bin/shoal-control-plane "" "15010/tcp 15011/tcp 15014/tcp 15017/tcp"
check "shoal-proxy-$version" 1337:1337 /usr/local/bin/shoal-proxy "" "15001/tcp 15006/tcp 15021/tcp"
check "shoal-proxy-init-$version" 0:0 /usr/local/bin/shoal-proxy init ""

# Run the binaries from an unpacked copy of each image, so a missing file fails here, not in a pod.
for tag in "shoal-control-plane-$version" "shoal-proxy-$version" "shoal-proxy-init-$version"; do
  umoci unpack --rootless --image "$layout:$tag" "$out/bundle-$tag" >/dev/null
done
cp_root=$out/bundle-shoal-control-plane-$version/rootfs
proxy_root=$out/bundle-shoal-proxy-$version/rootfs
init_root=$out/bundle-shoal-proxy-init-$version/rootfs
# The control plane's and the sidecar's images are their binaries and /etc: nothing else to run.
for root in "$cp_root" "$proxy_root"; do
  extra=$(cd "$root" && find . -type f ! -path './usr/local/bin/*' ! -path './etc/*')
  [ -z "$extra" ] || fail "${root#"$out"/}: files besides the binaries and /etc: $extra"
done
in_root "$cp_root" /usr/local/bin/shoal-control-plane --version
in_root "$cp_root" /usr/local/bin/shoalctl --version
in_root "$proxy_root" /usr/local/bin/shoal-proxy --version
in_root "$init_root" /usr/sbin/iptables --version
in_root "$init_root" /usr/sbin/iptables-legacy --version
in_root "$init_root" /usr/local/bin/shoal-proxy init --dry-run >"$out/init-dry-run.txt" ||
  fail "shoal-proxy init --dry-run in the image"
grep -q -- '--uid-owner 1337' "$out/init-dry-run.txt" || fail "shoal-proxy init --dry-run printed no rules"
echo "shoal-proxy init --dry-run: $(wc -l <"$out/init-dry-run.txt") commands"
if [ "$(id -u)" != 0 ]; then
  echo "not root: the real runs of init, the control plane and the proxy are left out (they need network namespaces of their own)"
  rm -rf "$out"/bundle-* "$out"/rootfs-*
  echo "images built: $layout (tags $(umoci ls --layout "$layout" | tr '\n' ' ')) and $out/*.tar"
  exit 0
fi

# A real `shoal-proxy init` with each backend, in a new network namespace (the host's rules are not touched):
# proves the extensions its rules use (tcp, owner, REDIRECT) load from the image. Needs a kernel with the nat
# table; a container runtime provides /dev/null, which the chroot has to be given.
mknod -m 666 "$init_root/dev/null" c 1 3
for backend in iptables iptables-legacy; do
  PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin unshare --net chroot "$init_root" \
    /usr/local/bin/shoal-proxy init --iptables "$backend" || fail "shoal-proxy init --iptables $backend in the image"
done

# The control plane and the proxy run in their images, as their images' users, in one new network namespace:
# the control plane creates its store and CA and answers `shoalctl status` (from its image) at a name of
# /etc/hosts (the kubelet writes that file in a pod); the proxy passes a request through to a name it
# resolves the same way, to a server on the host's side of the chroot.
install -d -o 65532 -g 65532 "$cp_root/var/lib/shoal"
for root in "$cp_root" "$proxy_root"; do
  printf '127.0.0.1 localhost\n127.0.0.1 control-plane.image-check upstream.image-check\n' >"$root/etc/hosts"
done
mkdir -p "$out/www"
echo "served to the proxy in its image" >"$out/www/check.txt"
export out cp_root proxy_root
unshare --net bash -euo pipefail -c '
  ip link set lo up
  fail() { echo "FAIL: $*" >&2; exit 1; }
  pids=()
  trap "kill \${pids[*]} 2>/dev/null || true; wait" EXIT
  # Waits up to 10 s for URL $1 to answer 200.
  ready() {
    python3 - "$1" <<EOF
import sys, time, urllib.request
for _ in range(100):
    try:
        if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200: sys.exit(0)
    except OSError: pass
    time.sleep(0.1)
sys.exit(1)
EOF
  }
  SHOAL_CP_DATA_DIR=/var/lib/shoal SHOAL_CP_DISCOVERY_ADDR=127.0.0.1:15010 SHOAL_CP_ADMIN_ADDR=127.0.0.1:15011 \
    SHOAL_CP_METRICS_ADDR=127.0.0.1:15014 chroot --userspec=65532:65532 "$cp_root" /usr/local/bin/shoal-control-plane \
    >"$out/control-plane.log" 2>&1 &
  pids+=($!)
  ready http://127.0.0.1:15014/ready || { cat "$out/control-plane.log"; fail "shoal-control-plane did not start in its image"; }
  chroot --userspec=65532:65532 "$cp_root" /usr/local/bin/shoalctl --server http://control-plane.image-check:15011 status \
    >"$out/shoalctl-status.txt" 2>&1 || { cat "$out/shoalctl-status.txt"; fail "shoalctl status (from its image) failed"; }
  echo "shoal-control-plane ready in its image; shoalctl status from its image: $(head -1 "$out/shoalctl-status.txt")"

  python3 -m http.server 18080 --bind 127.0.0.1 --directory "$out/www" >/dev/null 2>&1 &
  pids+=($!)
  SHOAL_OUTBOUND_MODE=explicit SHOAL_OUTBOUND_ADDR=127.0.0.1:15001 SHOAL_INBOUND_ADDR=127.0.0.1:15006 \
    SHOAL_ADMIN_ADDR=127.0.0.1:15021 \
    chroot --userspec=1337:1337 "$proxy_root" /usr/local/bin/shoal-proxy run >"$out/proxy.log" 2>&1 &
  pids+=($!)
  ready http://127.0.0.1:15021/ready || { cat "$out/proxy.log"; fail "shoal-proxy did not start in its image"; }
  python3 - <<EOF || { cat "$out/proxy.log"; fail "shoal-proxy in its image did not pass a request through to upstream.image-check"; }
import urllib.request
request = urllib.request.Request("http://127.0.0.1:15001/check.txt", headers={"Host": "upstream.image-check:18080"})
body = urllib.request.urlopen(request, timeout=5).read().decode()
assert body == "served to the proxy in its image\n", body
EOF
  echo "shoal-proxy ready in its image; a request to upstream.image-check:18080 passed through it"
'
rm -rf "$out"/bundle-* "$out"/rootfs-* "$out/www"
echo "images built: $layout (tags $(umoci ls --layout "$layout" | tr '\n' ' ')) and $out/*.tar"
