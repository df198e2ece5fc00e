# syntax=docker/dockerfile:1
# The mcpgw container image: built with the Rust toolchain, run on Debian slim
# as an unprivileged user, with a default configuration (deploy/container/mcpgw.toml).
#
#   docker build -t mcpgw .                                  # the gateway (the last stage)
#   docker build --target counter -t mcpgw-counter .         # the repository's counter test
#                                                            # server, compose.yaml's sample upstream
#   docker run --rm -p 127.0.0.1:8080:8080 mcpgw
#
# README.md, "Running in a container", says what the default configuration allows.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit, buildah);
# the binary is copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mcpgw \
    && install -m 0755 target/release/mcpgw /usr/local/bin/mcpgw

FROM build AS counter-build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mcpgw-tests --bin counter-server \
    && install -m 0755 target/release/counter-server /usr/local/bin/counter-server

# The sample upstream of compose.yaml (not needed by the gateway).
FROM ${RUNTIME_IMAGE} AS counter
COPY --from=counter-build /usr/local/bin/counter-server /usr/local/bin/counter-server
USER 65534:65534
EXPOSE 3101
ENTRYPOINT ["/usr/local/bin/counter-server"]
CMD ["--listen", "0.0.0.0:3101"]

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: the system roots for https upstreams and token endpoints.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mcpgw \
    && useradd --system --uid 10001 --gid mcpgw --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin mcpgw \
    && install -d -o mcpgw -g mcpgw -m 0700 /run/mcpgw
COPY --from=build /usr/local/bin/mcpgw /usr/local/bin/mcpgw
COPY deploy/container/mcpgw.toml /etc/mcpgw/mcpgw.toml
USER mcpgw:mcpgw
EXPOSE 8080
# SIGTERM drains: in-flight requests get [shutdown] grace_ms; give the
# container runtime's stop timeout at least as long (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mcpgw"]
CMD ["serve", "--config", "/etc/mcpgw/mcpgw.toml"]
