# syntax=docker/dockerfile:1
# The base image is a build argument: builds that cannot reach Docker Hub pass a local
# Node 20+ image (e.g. --build-arg NODE_IMAGE=local/node:20).
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
# better-sqlite3 builds from source when no prebuilt binary can be fetched.
RUN if command -v apt-get >/dev/null && ! command -v g++ >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*; \
    fi
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json mirror.config.yaml ./
RUN mkdir -p /var/lib/mirror && chown -R node:node /var/lib/mirror 2>/dev/null || \
    (useradd --system --uid 10001 --home /var/lib/mirror mirror && chown -R mirror /var/lib/mirror)
USER node
ENV MIRROR_STORAGE=/var/lib/mirror MIRROR_LISTEN=0.0.0.0:5000
VOLUME ["/var/lib/mirror"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:5000/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["serve", "--config", "/app/mirror.config.yaml"]
