# The `orch` image: `docker build -t orch:local .` (or your registry's name), then
# `orch export kubernetes FILE --image IMAGE`. Every component runs as `orch run COMPONENT`.
#
# Stage 1 builds the static release binary exactly as `make release` does
# (scripts/release.sh: glibc linked statically). Stage 2 is a small base with no shell or
# package manager; distroless "cc" rather than "static" so that name lookups (the
# registry's and balancer's Service names) have glibc's NSS at hand whatever the build.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    ./scripts/release.sh --locked && cp target/release/orch /usr/local/bin/orch

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/orch /usr/local/bin/orch
# The non-root user of the base image (65532); the components need no privilege.
USER nonroot
ENTRYPOINT ["/usr/local/bin/orch"]
CMD ["--help"]
