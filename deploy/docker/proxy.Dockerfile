# strait-proxy: the sidecar, and (same image) the strait-init container that runs
# `strait-proxy init-iptables`. Build from the repository root:
#   docker build -f deploy/docker/proxy.Dockerfile -t strait/proxy:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p strait-proxy --bin strait-proxy

FROM debian:bookworm-slim
# iptables for init-iptables (nft backend, like current kube-proxy); nothing else.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/strait-proxy /usr/local/bin/strait-proxy
COPY deploy/proxy/sidecar.yaml /etc/strait/sidecar.yaml
# The fixed proxy UID/GID the iptables rules exclude (strait_config::sidecar::PROXY_UID).
USER 1530:1530
EXPOSE 15301 15302 15303
ENTRYPOINT ["/usr/local/bin/strait-proxy"]
CMD ["--config", "/etc/strait/sidecar.yaml"]
