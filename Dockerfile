# Herald's container image. Not built on the development machines (they have no
# container engine); kept minimal: build with the Swift toolchain image, run on slim
# Debian with only the C libraries Herald links and the Swift runtime.
#
#   docker build -t herald:0.1.0 .
#   docker run --rm herald:0.1.0 --help

FROM swift:6.3-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libhiredis-dev librabbitmq-dev libsimdjson-dev libssl-dev pkg-config libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source changes reuse the resolved packages' layer.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product herald --static-swift-stdlib \
 && install -D "$(swift build -c release --show-bin-path)/herald" /out/herald

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libhiredis0.14 librabbitmq4 libsimdjson14 libcurl4 ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /out/herald /usr/local/bin/herald
USER 10001:10001
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["node"]
