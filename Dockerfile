# One image for both DaemonSets: ztunnel, cni-agent and the meshtunnel-cni plugin it installs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p meshtunnel -p cni-agent --bins \
 && install -D -t /out target/release/ztunnel target/release/cni-agent target/release/meshtunnel-cni

FROM debian:bookworm-slim
# iptables/nftables: the agent writes in-pod rules with either backend; iproute2: policy routes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT []
