# One image per binary, built from this workspace:
#   docker build --build-arg BIN=gatehouse-operator -t REGISTRY/gatehouse-operator:TAG .
#   docker build --build-arg BIN=gatehouse-sidecar  -t REGISTRY/gatehouse-sidecar:TAG .
# The runtime image has no shell; it runs as the distroless nonroot user (65532), matching the
# chart's securityContext. The chart passes flags as args, so the binary is the entrypoint.
FROM docker.io/library/rust:1.95-bookworm AS build
ARG BIN=gatehouse-sidecar
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin "${BIN}" \
    && install -D "target/release/${BIN}" /out/app

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/app /usr/local/bin/app
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/app"]
