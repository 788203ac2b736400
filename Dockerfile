# syntax=docker/dockerfile:1
# qwen3-serve images. Targets:
#   cpu  — onnxruntime-node's CPU build (ships inside the npm package)
#   gpu  — CUDA 12 + cuDNN 9 runtime with onnxruntime-node's CUDA execution provider
# No weights are baked in: mount models on /models; exports are cached on /cache.

ARG NODE_VERSION=24

# ---- build: compile TypeScript, keep production dependencies only ----
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
# Scripts off: onnxruntime-node's installer would fetch CUDA binaries here.
RUN npm ci --ignore-scripts
COPY src ./src
COPY scripts ./scripts
COPY assets ./assets
COPY ui ./ui
RUN npx tsc -p tsconfig.build.json && npx tsc -p ui && node dist/scripts/build_ui.js && npm prune --omit=dev --ignore-scripts

# ---- cuda-ep: fetch onnxruntime-node's CUDA 12 execution provider at build time ----
FROM build AS cuda-ep
RUN cd node_modules/onnxruntime-node && ONNXRUNTIME_NODE_INSTALL=cuda12 node script/install.js

# ---- cpu ----
FROM node:${NODE_VERSION}-bookworm-slim AS cpu
ENV NODE_ENV=production \
    QWEN3_SERVE_HOST=0.0.0.0 \
    QWEN3_SERVE_PORT=8000 \
    QWEN3_SERVE_CACHE=/cache \
    QWEN3_SERVE_DEVICE=cpu
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/assets ./assets
RUN mkdir -p /models /cache && chown node:node /models /cache
USER node
EXPOSE 8000
VOLUME ["/cache"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.QWEN3_SERVE_PORT||8000)+'/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "dist/src/cli.js"]
CMD ["serve"]

# ---- gpu ----
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS gpu
ARG NODE_VERSION
COPY --from=build /usr/local/bin/node /usr/local/bin/node
ENV NODE_ENV=production \
    QWEN3_SERVE_HOST=0.0.0.0 \
    QWEN3_SERVE_PORT=8000 \
    QWEN3_SERVE_CACHE=/cache \
    QWEN3_SERVE_DEVICE=auto \
    QWEN3_SERVE_DTYPE=fp16
WORKDIR /app
COPY --from=cuda-ep /app/package.json ./
COPY --from=cuda-ep /app/node_modules ./node_modules
COPY --from=cuda-ep /app/dist ./dist
COPY --from=cuda-ep /app/assets ./assets
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid app --no-create-home app \
 && mkdir -p /models /cache && chown app:app /models /cache
USER app
EXPOSE 8000
VOLUME ["/cache"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.QWEN3_SERVE_PORT||8000)+'/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "dist/src/cli.js"]
CMD ["serve"]
