# The pause image (registry.k8s.io/pause): the sandbox container of every pod, built from
# the Kubernetes release's own build/pause/linux/pause.c (compiled statically by the harness).
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
