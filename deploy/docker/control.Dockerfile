# strait-control (API, config push, event bus, injection webhook) and straitctl.
#   docker build -f deploy/docker/control.Dockerfile -t strait/control:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p strait-control --bins

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/strait-control /usr/local/bin/strait-control
COPY --from=build /src/target/release/straitctl /usr/local/bin/straitctl
USER 65532:65532
EXPOSE 15010 15443
ENTRYPOINT ["/usr/local/bin/strait-control"]
CMD ["serve", "--data-dir", "/var/lib/strait", "--listen", "0.0.0.0:15010"]
