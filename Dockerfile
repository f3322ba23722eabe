# The Hangar image: hangar-server (controller, proxy, dev), hangar-drone and the hangar CLI.
#
# Build it with scripts/image, which assembles a root file system under target/image/ (the
# binaries, the shared libraries they load, a minimal /etc), then runs `docker build` here with
# ROOTFS and STATE naming it. The base is empty
# (`FROM scratch`), so nothing is pulled from a registry and the image holds nothing else: no
# shell, no package manager.
#
#   docker run --rm hangar:latest --version
#   docker run hangar:latest controller --listen 0.0.0.0:7070 --admin-listen 0.0.0.0:7071 --database postgres://…
#   docker run --entrypoint hangar-drone hangar:latest run --controller http://ctl:7070 --name d1 --runtime process
#   docker run --rm --entrypoint hangar hangar:latest --controller http://ctl:7070 nodes list
#
# docs/operations.md#the-container-image explains the choices.
FROM scratch
ARG VERSION=unknown
ARG PROFILE=release
ARG ROOTFS=target/image/rootfs
ARG STATE=target/image/state
COPY ${ROOTFS}/ /
# The one writable directory, owned by the unprivileged user: the controller's SQLite database
# (./hangar-data) and a drone's journal (./hangar-drone-data) land here by default.
COPY --chown=10001:10001 ${STATE}/ /var/lib/hangar/
WORKDIR /var/lib/hangar
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
ENV PATH=/usr/local/bin
LABEL org.opencontainers.image.title="hangar" \
      org.opencontainers.image.description="Hangar: hangar-server, hangar-drone and the hangar CLI" \
      org.opencontainers.image.version="${VERSION}" \
      hangar.build-profile="${PROFILE}"
# gRPC API, admin listener (/metrics, /healthz, /readyz, dashboard), HTTP proxy.
EXPOSE 7070 7071 7080
ENTRYPOINT ["/usr/local/bin/hangar-server"]
CMD ["--help"]
