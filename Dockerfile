# Herald's container image, for a build with a registry (docker or podman):
#
#   docker build -t herald:0.1.0 .
#   docker run --rm herald:0.1.0 --help
#
# Without a registry, scripts/image builds the same runtime stage on a Debian base made
# with debootstrap and the host's Swift toolchain (docs/image.md). It reads this file:
# the runtime packages from RUNTIME_PACKAGES, and every line below the "shared with
# scripts/image" mark; scripts/image-check keeps the two from drifting.

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
# The Swift runtime and Foundation linked in: the runtime stage needs no toolchain.
# Linked by lld with packed relative relocations (DT_RELR; bookworm's glibc 2.36 reads
# them) and without exporting every symbol: about 5 MB less resident in every node
# (docs/image.md). --strip-debug keeps the symbol table, so crash backtraces still name functions.
RUN swift build -c release --product herald --static-swift-stdlib -Xswiftc -use-ld=lld -Xlinker -z -Xlinker pack-relative-relocs -Xlinker --no-export-dynamic \
 && install -D "$(swift build -c release --show-bin-path)/herald" /out/herald \
 && strip --strip-debug /out/herald

FROM debian:bookworm-slim AS runtime
# Only the shared libraries herald links (hiredis, rabbitmq-c with OpenSSL, simdjson with
# libstdc++), CA certificates for https targets and time zones.
ARG RUNTIME_PACKAGES="libhiredis0.14 librabbitmq4 libsimdjson14 libssl3 libcurl4 ca-certificates tzdata"
RUN apt-get update \
 && apt-get install -y --no-install-recommends $RUNTIME_PACKAGES \
 && rm -rf /var/lib/apt/lists/*
# ---- shared with scripts/image: below here, both builds run the same instructions.
# The chart runs it as 10001:10001 with a read-only root file system (/tmp is an emptyDir).
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /out/herald /usr/local/bin/herald
USER 10001:10001
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["node"]
