# The vipam image: one binary for every mode (`vipam controller`, `vipam agent`, ...).
#   docker build -t ghcr.io/vipam/vipam:0.1.0 .
# The manifests in kustomize/ and manifests/install.yaml use this reference.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin vipam \
    && cp target/release/vipam /vipam

# glibc and libgcc only, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /vipam /vipam
# 65532: distroless' nonroot. The agent's DaemonSet runs it as root with NET_ADMIN/NET_RAW.
USER nonroot
ENTRYPOINT ["/vipam"]
