# The e2e suite's agnhost image (registry.k8s.io/e2e-test-images/agnhost), with the agnhost
# program built from its Go source (k8s.io/kubernetes/test/images/agnhost) of the cluster's
# Kubernetes release. Upstream's image is Alpine with the tools its tests call inside the
# container (test/images/agnhost/Dockerfile); here the same tools come from Debian: bash,
# curl, wget, nc, ss/ip, iperf, socat, dig. Left out: the fake registry and the porter
# certificates (not used by the networking suites) and the agnhost-2 entrypoint copy.
# Debian trixie, not bookworm: the IPerf2 test parses iperf's CSV output and needs iperf 2.2
# or later (17 fields, test/e2e/network/util_iperf.go); bookworm has 2.1.8.
FROM debian:trixie-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        bash curl wget netcat-openbsd iproute2 iputils-ping iperf socat bind9-dnsutils util-linux procps \
    && rm -rf /var/lib/apt/lists/*
# netexec's upload directory; the user and group one of the e2e tests expects in the image.
RUN mkdir /uploads \
    && groupadd -g 50000 group-defined-in-image \
    && useradd -u 1000 -M -G group-defined-in-image user-defined-in-image
COPY agnhost /agnhost
EXPOSE 80 8080 8081 9376 5000
ENTRYPOINT ["/agnhost"]
CMD ["pause"]
