# Cluster DNS: CoreDNS built from its Go module (github.com/coredns/coredns), statically.
FROM scratch
COPY coredns /coredns
EXPOSE 53 53/udp
ENTRYPOINT ["/coredns"]
