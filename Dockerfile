# syntax=docker/dockerfile:1
# registry-mirror: multi-stage build, production dependencies only, non-root.
# The base image is a build argument: where Docker Hub cannot be reached, pass a local Node
# 20+ image (npm run test:image builds one with debootstrap and checks this file for real).
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
# Where native addons find Node's headers when they cannot be downloaded (e.g. /usr/local).
ARG npm_config_nodedir=
WORKDIR /src
# better-sqlite3 compiles from source when no prebuilt binary can be fetched.
RUN if ! command -v g++ >/dev/null && command -v apt-get >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*; \
    fi
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
# npm ci runs `prepare` (tsc → dist/); then drop the dev dependencies.
RUN npm ci --no-audit --no-fund && npm prune --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    MIRROR_STORAGE=/var/lib/mirror \
    MIRROR_LISTEN=0.0.0.0:5000
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json mirror.config.yaml ./
# The official Node images have a `node` user (uid 1000); make one if the base has not.
RUN (id -u node >/dev/null 2>&1 || useradd --uid 1000 --create-home node) \
 && mkdir -p /var/lib/mirror && chown node:node /var/lib/mirror
USER node
VOLUME ["/var/lib/mirror"]
EXPOSE 5000
# Asks the port the mirror listens on (MIRROR_LISTEN), not a fixed one.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "const l=process.env.MIRROR_LISTEN||':5000';fetch('http://127.0.0.1:'+l.slice(l.lastIndexOf(':')+1)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# A small young generation keeps the resident set low under load at no cost in throughput (npm run bench).
ENTRYPOINT ["node", "--max-semi-space-size=2", "/app/dist/cli.js"]
CMD ["serve", "--config", "/app/mirror.config.yaml"]
