#!/usr/bin/env bash
# npm run test:image — the Dockerfile, verified for real.
# No base image can be pulled here, so a local Node base is made (debootstrap'd Debian rootfs
# + this machine's Node 20, cached under /tmp/registry-mirror-image-cache), the image is built
# against it (NODE_IMAGE build argument), run under a dockerd started by hand, and a pull goes
# through it with skopeo. Checks: it runs as non-root and its HEALTHCHECK turns healthy.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE=/tmp/registry-mirror-image-cache
WORK="$(mktemp -d /tmp/mirror-image-test-XXXXXX)"
START=$(date +%s)
log() { echo "[test:image $(( $(date +%s) - START ))s] $*"; }

DOCKERD_PID=""; UPSTREAM_PID=""; CONTAINER=""
cleanup() {
  set +e
  [ -n "$CONTAINER" ] && docker_ rm -f "$CONTAINER" >/dev/null 2>&1
  [ -n "$UPSTREAM_PID" ] && kill "$UPSTREAM_PID" 2>/dev/null
  if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID" 2>/dev/null; for _ in $(seq 1 50); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done; kill -9 "$DOCKERD_PID" 2>/dev/null; fi
  grep " $WORK" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. What it needs, from Debian.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v skopeo >/dev/null || missing+=(skopeo)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
DOCKER_CLI=/usr/bin/docker; [ -x "$DOCKER_CLI" ] || DOCKER_CLI=docker
docker_() { DOCKER_HOST="unix://$WORK/docker.sock" "$DOCKER_CLI" "$@"; }

# 2. A local Node base image: Debian bookworm (minbase) + this machine's Node and npm + a node user.
if [ ! -f "$CACHE/node-base.tar" ]; then
  mkdir -p "$CACHE"
  if [ ! -x "$CACHE/rootfs/bin/bash" ]; then
    log "debootstrap bookworm (once; cached in $CACHE)"
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1
  fi
  R="$CACHE/rootfs"
  install -m 0755 "$(readlink -f "$(command -v node)")" "$R/usr/local/bin/node"
  mkdir -p "$R/usr/local/lib/node_modules" "$R/usr/local/include"
  cp -a "$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")" "$R/usr/local/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$R/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$R/usr/local/bin/npx"
  # Node's headers, so that native addons (better-sqlite3) build without downloading them.
  [ -d /usr/include/node ] && cp -a /usr/include/node "$R/usr/local/include/node"
  # This machine's trust store (its package registries may sit behind a TLS-inspecting proxy).
  mkdir -p "$R/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
  chroot "$R" /usr/sbin/useradd --uid 1000 --create-home --shell /bin/bash node 2>/dev/null || true
  chroot "$R" /usr/local/bin/node --version >/dev/null
  tar -C "$R" -cf "$CACHE/node-base.tar" .
fi

# 3. dockerd, by hand.
mkdir -p "$WORK/root" "$WORK/exec"
cat >"$WORK/daemon.json" <<JSON
{ "iptables": false, "ip6tables": false, "bridge": "none", "storage-driver": "vfs" }
JSON
dockerd --config-file "$WORK/daemon.json" --data-root "$WORK/root" --exec-root "$WORK/exec" --pidfile "$WORK/docker.pid" -H "unix://$WORK/docker.sock" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 120); do docker_ version >/dev/null 2>&1 && break; sleep 0.5; done
docker_ version >/dev/null || { tail -20 "$WORK/dockerd.log"; exit 1; }
log "dockerd up"

# 4. Import the base and build.
docker_ import --change 'CMD ["node"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' "$CACHE/node-base.tar" local/node:20 >/dev/null
log "building the image against local/node:20"
docker_ build --network host --build-arg NODE_IMAGE=local/node:20 --build-arg npm_config_nodedir=/usr/local -t registry-mirror:test "$ROOT"
log "built: $(docker_ image inspect --format '{{.Size}}' registry-mirror:test | awk '{printf "%.0f MiB", $1/1048576}')"

# 5. An upstream to pull through: the tests' real registry (distribution + token auth), seeded.
cat >"$WORK/upstream.mts" <<TS
import { startRealUpstream } from '$ROOT/test/fixtures/real-upstream.ts';
import { seedStandardContent } from '$ROOT/test/fixtures/seed.ts';
const u = await startRealUpstream();
const c = await seedStandardContent(u);
console.log(JSON.stringify({ url: u.url, digest: c.busybox.content.manifest.digest }));
process.on('SIGTERM', async () => { await u.stop(); process.exit(0); });
setInterval(() => {}, 1000);
TS
(cd "$ROOT" && node --import tsx "$WORK/upstream.mts" >"$WORK/upstream.json" 2>"$WORK/upstream.log") &
UPSTREAM_PID=$!
for _ in $(seq 1 120); do [ -s "$WORK/upstream.json" ] && break; sleep 0.5; done
UPSTREAM_URL=$(node -e "console.log(JSON.parse(require('fs').readFileSync('$WORK/upstream.json','utf8')).url)")
DIGEST=$(node -e "console.log(JSON.parse(require('fs').readFileSync('$WORK/upstream.json','utf8')).digest)")
PORT=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")

# 6. Run it.
CONTAINER=$(docker_ run -d --network host --health-interval 2s --health-start-period 2s \
  -e MIRROR_LISTEN="127.0.0.1:$PORT" -e MIRROR_UPSTREAM="$UPSTREAM_URL" registry-mirror:test)
log "container $CONTAINER started"
for _ in $(seq 1 60); do
  status=$(docker_ inspect --format '{{.State.Health.Status}}' "$CONTAINER")
  [ "$status" = healthy ] && break
  [ "$(docker_ inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || { docker_ logs "$CONTAINER"; exit 1; }
  sleep 1
done
[ "$status" = healthy ] || { echo "health: $status"; docker_ inspect --format '{{json .State.Health}}' "$CONTAINER"; docker_ logs "$CONTAINER" | tail -20; exit 1; }
log "healthcheck: $status"
uid=$(docker_ exec "$CONTAINER" id -u)
[ "$uid" != 0 ] || { echo "the container runs as root"; exit 1; }
log "runs as uid $uid ($(docker_ exec "$CONTAINER" id -un))"

# 7. Pull through it.
skopeo copy --src-tls-verify=false --retry-times 0 --override-arch amd64 --override-os linux \
  "docker://127.0.0.1:$PORT/library/busybox:1.36" "dir:$WORK/pulled" >/dev/null
got="sha256:$(sha256sum "$WORK/pulled/manifest.json" | cut -d' ' -f1)"
[ "$got" = "$DIGEST" ] || { echo "pulled manifest $got, expected $DIGEST"; exit 1; }
log "skopeo pulled library/busybox:1.36 through the container: $got"
docker_ exec "$CONTAINER" node -e "fetch('http://127.0.0.1:$PORT/healthz').then(r=>process.exit(r.ok?0:1))"
log "image check passed in $(( $(date +%s) - START )) s"
