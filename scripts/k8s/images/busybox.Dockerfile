# The e2e suite's busybox image (registry.k8s.io/e2e-test-images/busybox), from Debian's
# statically linked busybox (package busybox-static): every applet linked where busybox
# puts it (/bin, /sbin, /usr/bin, /usr/sbin), a /tmp, and sh as the default command.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "mkdir", "-p", "/sbin", "/usr/bin", "/usr/sbin", "/tmp", "/etc"]
RUN ["/bin/busybox", "chmod", "1777", "/tmp"]
RUN ["/bin/busybox", "--install", "-s"]
CMD ["sh"]
