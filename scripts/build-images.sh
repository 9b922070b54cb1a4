#!/usr/bin/env bash
# Builds the OCI images shoal/shoal-proxy and shoal/shoal-control-plane without a container daemon or a
# registry: each image is one layer assembled from scratch with umoci, holding the binaries, the shared
# libraries they load (found with ldd, copied from this host) and, for the proxy, Debian's iptables with its
# libraries and xtables extensions. The same contents as images/*/Containerfile, which need registry bases.
#
#   scripts/build-images.sh                     # cargo build --release, then both images
#   scripts/build-images.sh --bin-dir target/dist   # binaries built already (scripts/build-release.sh, or
#                                                  # target/debug for a quick check)
#
# Output, rebuilt from nothing on every run (idempotent): target/images/oci (one OCI layout, a tag per image:
# shoal-proxy-<version>, shoal-control-plane-<version>) and target/images/<image>-<version>.tar (docker-archive,
# for `kind load image-archive`, `podman load`, `skopeo copy` to a registry). Each image is checked after the
# build: `umoci stat`, `skopeo inspect` (user, entrypoint, ports), and its binaries run inside its own root file
# system (chroot; `unshare -r` when not root): `iptables --version`, `shoal-proxy init --dry-run`,
# `shoalctl --version`, `shoal-control-plane --version`.
#
# Needs umoci, skopeo and iptables (Debian packages; `.ci/run` installs them), and the host's glibc: the images
# carry the host's libc, so build on the oldest Debian the images should resemble (Debian 12 here).
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
for tool in umoci skopeo ldd strip python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (Debian: apt-get install umoci skopeo binutils; .ci/run installs umoci and skopeo)"
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || fail "no workspace version in Cargo.toml"

if [ -z "$bin_dir" ]; then
  cargo build --release --locked -p shoal-proxy -p shoal-control-plane --bins
  bin_dir=${CARGO_TARGET_DIR:-target}/release
fi
for bin in shoal-proxy shoal-control-plane shoalctl; do
  [ -x "$bin_dir/$bin" ] || fail "$bin_dir/$bin not found or not executable"
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

# Minimal /etc and directories every image has: passwd and group (so tools name the user), a writable /tmp,
# and Debian's merged /usr (/lib -> usr/lib, ...): libraries land where ldd found them whichever name it used,
# and paths compiled into the binaries (iptables' /usr/lib/<arch>/xtables) hold what the host has there.
base_root() {
  local root=$1 user=$2 uid=$3 dir
  mkdir -p "$root/etc" "$root/tmp" "$root/dev" "$root/usr/local/bin"
  for dir in bin sbin lib lib64; do
    mkdir -p "$root/usr/$dir"
    ln -sfn "usr/$dir" "$root/$dir"
  done
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n%s:x:%s:%s:%s:/nonexistent:/usr/sbin/nologin\n' \
    "$user" "$uid" "$uid" "$user" >"$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" >"$root/etc/group"
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
add_libs "$root" /usr/local/bin/shoal-control-plane /usr/local/bin/shoalctl
make_image "shoal-control-plane-$version" "$root" \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/shoal-control-plane \
  --config.exposedports 15010/tcp --config.exposedports 15011/tcp \
  --config.exposedports 15014/tcp --config.exposedports 15017/tcp

echo "== shoal-proxy ($version)"
root=$out/rootfs-proxy
base_root "$root" shoal-proxy 1337
add_bin "$root" shoal-proxy
add_libs "$root" /usr/local/bin/shoal-proxy
# iptables for `shoal-proxy init`: Debian's multi-call binaries (nft and legacy backends) under the names
# init calls (--iptables / --ip6tables; `iptables` is the nft backend, as on Debian), their libraries, and the
# xtables extensions they dlopen (not in ldd's output).
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
make_image "shoal-proxy-$version" "$root" \
  --config.user 1337:1337 \
  --config.entrypoint /usr/local/bin/shoal-proxy \
  --config.exposedports 15001/tcp --config.exposedports 15006/tcp --config.exposedports 15021/tcp

echo "== check"
check() {
  local tag=$1 user=$2 entrypoint=$3 ports=$4
  umoci stat --image "$layout:$tag" >"$out/$tag.stat"
  # One layer (the inserted root file system) and the configuration.
  [ "$(grep -c '^sha256:.* umoci insert ' "$out/$tag.stat")" = 1 ] || { cat "$out/$tag.stat"; fail "$tag: expected one layer"; }
  skopeo inspect --config "oci:$layout:$tag" >"$out/$tag.config.json"
  python3 - "$out/$tag.config.json" "$user" "$entrypoint" "$ports" <<'EOF' || fail "$tag: image config"
import json, sys
config = json.load(open(sys.argv[1]))["config"]
user, entrypoint, ports = sys.argv[2], [sys.argv[3]], set(sys.argv[4].split())
problems = []
if config.get("User") != user: problems.append(f"User {config.get('User')!r}, expected {user!r}")
if config.get("Entrypoint") != entrypoint: problems.append(f"Entrypoint {config.get('Entrypoint')}, expected {entrypoint}")
if set(config.get("ExposedPorts", {})) != ports: problems.append(f"ExposedPorts {sorted(config.get('ExposedPorts', {}))}, expected {sorted(ports)}")
for p in problems: print(f"  {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
  skopeo copy --quiet "oci:$layout:$tag" "docker-archive:$out/$tag.tar:shoal/${tag%-"$version"}:$version"
  echo "$tag: user $user, entrypoint $entrypoint, ports $ports; $(du -h "$out/$tag.tar" | cut -f1) docker-archive"
}
check "shoal-control-plane-$version" 65532:65532 /usr/local/bin/shoal-control-plane "15010/tcp 15011/tcp 15014/tcp 15017/tcp"
check "shoal-proxy-$version" 1337:1337 /usr/local/bin/shoal-proxy "15001/tcp 15006/tcp 15021/tcp"

# Run the binaries from an unpacked copy of each image, so a missing library fails here, not in a pod.
for tag in "shoal-control-plane-$version" "shoal-proxy-$version"; do
  bundle=$out/bundle-$tag
  umoci unpack --rootless --image "$layout:$tag" "$bundle" >/dev/null
done
cp_root=$out/bundle-shoal-control-plane-$version/rootfs
proxy_root=$out/bundle-shoal-proxy-$version/rootfs
in_root "$cp_root" /usr/local/bin/shoal-control-plane --version
in_root "$cp_root" /usr/local/bin/shoalctl --version
in_root "$proxy_root" /usr/sbin/iptables --version
in_root "$proxy_root" /usr/sbin/iptables-legacy --version
in_root "$proxy_root" /usr/local/bin/shoal-proxy init --dry-run >"$out/init-dry-run.txt" ||
  fail "shoal-proxy init --dry-run in the image"
grep -q -- '--uid-owner 1337' "$out/init-dry-run.txt" || fail "shoal-proxy init --dry-run printed no rules"
echo "shoal-proxy init --dry-run: $(wc -l <"$out/init-dry-run.txt") commands"
# A real `shoal-proxy init` with each backend, in a new network namespace (the host's rules are not touched):
# proves the extensions its rules use (tcp, owner, REDIRECT) load from the image. Needs root and a kernel
# with the nat table; a container runtime provides /dev/null, which the chroot has to be given.
if [ "$(id -u)" = 0 ]; then
  mknod -m 666 "$proxy_root/dev/null" c 1 3
  for backend in iptables iptables-legacy; do
    PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin unshare --net chroot "$proxy_root" \
      /usr/local/bin/shoal-proxy init --iptables "$backend" || fail "shoal-proxy init --iptables $backend in the image"
  done
  # The control plane starts in its image (store created, CA generated, listeners bound) and is stopped.
  # As the image's user, so the store and CA files are created as they are in a pod.
  install -d -o 65532 -g 65532 "$cp_root/var/lib/shoal"
  SHOAL_CP_DATA_DIR=/var/lib/shoal SHOAL_CP_DISCOVERY_ADDR=0.0.0.0:0 SHOAL_CP_ADMIN_ADDR=127.0.0.1:0 \
    SHOAL_CP_METRICS_ADDR=0.0.0.0:0 unshare --net chroot --userspec=65532:65532 "$cp_root" /usr/local/bin/shoal-control-plane \
    >"$out/control-plane.log" 2>&1 &
  cp_pid=$!
  for _ in $(seq 100); do
    grep -q "control plane ready" "$out/control-plane.log" && break
    kill -0 "$cp_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$cp_pid" 2>/dev/null || true
  wait "$cp_pid" || true
  grep -q "control plane ready" "$out/control-plane.log" || { cat "$out/control-plane.log"; fail "shoal-control-plane did not start in its image"; }
  echo "shoal-control-plane started in its image: $(grep -c . "$out/control-plane.log") log lines, ready"
else
  echo "not root: the real shoal-proxy init and control-plane runs are left out (they need a network namespace of their own)"
fi
rm -rf "$out"/bundle-* "$out"/rootfs-*
echo "images built: $layout (tags $(umoci ls --layout "$layout" | tr '\n' ' ')) and $out/*.tar"
