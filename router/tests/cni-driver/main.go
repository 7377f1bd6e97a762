// cni-driver runs one CNI operation on a network configuration list through libcni, the
// library container runtimes (containerd, CRI-O, podman's CNI backend) use to call plugins.
// The libcni integration test (router/tests/libcni.rs) builds it with Debian's Go and
// golang-github-appc-cni-dev, offline, and drives deploy/10-weft.conflist with it.
//
//	cni-driver -conflist FILE -netns PATH -id CONTAINERID -ifname eth0 -path DIR1:DIR2 \
//	    -cmd add|check|del [-portmap HOSTPORT:CONTAINERPORT[/PROTO]]... \
//	    [-bandwidth INGRESS_BPS[:BURST_BITS]] [-cachedir DIR] [-args K=V;K=V]
//
// ADD prints the result JSON to stdout. Any failure prints the error to stderr and exits 1.
// Port mappings and the bandwidth limit are passed as capability arguments (runtimeConfig),
// the way a runtime passes them, so that chained portmap and bandwidth plugins act on them;
// pass the same ones to check and del, as a runtime does.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// portMapping is the "portMappings" capability entry the portmap plugin reads.
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// bandwidth is the "bandwidth" capability entry the bandwidth plugin reads (bits per second
// and bits).
type bandwidth struct {
	IngressRate  uint64 `json:"ingressRate,omitempty"`
	IngressBurst uint64 `json:"ingressBurst,omitempty"`
}

type portList []portMapping

func (p *portList) String() string { return fmt.Sprint(*p) }

func (p *portList) Set(s string) error {
	proto := "tcp"
	if i := strings.IndexByte(s, '/'); i >= 0 {
		proto = strings.ToLower(s[i+1:])
		s = s[:i]
	}
	parts := strings.Split(s, ":")
	if len(parts) != 2 {
		return fmt.Errorf("want HOSTPORT:CONTAINERPORT[/PROTO], got %q", s)
	}
	host, err := parsePort(parts[0])
	if err != nil {
		return err
	}
	ctr, err := parsePort(parts[1])
	if err != nil {
		return err
	}
	*p = append(*p, portMapping{HostPort: host, ContainerPort: ctr, Protocol: proto})
	return nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	return n, nil
}

// parseBandwidth reads RATE[:BURST]. Without a burst it takes a tenth of a second's worth,
// but at least 512 kbit (64 KiB): a token bucket smaller than a packet drops everything.
func parseBandwidth(s string) (*bandwidth, error) {
	rateText, burstText, hasBurst := strings.Cut(s, ":")
	rate, err := strconv.ParseUint(rateText, 10, 64)
	if err != nil || rate == 0 {
		return nil, fmt.Errorf("invalid ingress rate %q (bits per second)", rateText)
	}
	burst := rate / 10
	if burst < 512*1024 {
		burst = 512 * 1024
	}
	if hasBurst {
		burst, err = strconv.ParseUint(burstText, 10, 64)
		if err != nil || burst == 0 {
			return nil, fmt.Errorf("invalid burst %q (bits)", burstText)
		}
	}
	return &bandwidth{IngressRate: rate, IngressBurst: burst}, nil
}

// parseArgs reads "K=V;K=V" into CNI_ARGS pairs.
func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("invalid CNI argument %q (want K=V)", kv)
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "cni-driver: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	var ports portList
	conflist := flag.String("conflist", "", "network configuration list (JSON)")
	netns := flag.String("netns", "", "path of the container's network namespace")
	id := flag.String("id", "", "container id")
	ifname := flag.String("ifname", "eth0", "interface name inside the container")
	path := flag.String("path", "", "plugin directories, separated by ':'")
	cmd := flag.String("cmd", "", "add, check or del")
	bw := flag.String("bandwidth", "", "ingress limit in bits/s, optionally :burst in bits")
	cacheDir := flag.String("cachedir", "", "libcni result cache (default: libcni's, /var/lib/cni)")
	args := flag.String("args", "", "CNI_ARGS as K=V;K=V")
	timeout := flag.Duration("timeout", 60*time.Second, "limit for the whole operation")
	flag.Var(&ports, "portmap", "HOSTPORT:CONTAINERPORT[/PROTO] (repeatable)")
	flag.Parse()
	if flag.NArg() != 0 {
		fail("unexpected arguments: %v", flag.Args())
	}

	if *conflist == "" || *id == "" || *path == "" || *ifname == "" {
		fail("-conflist, -id, -ifname and -path are required")
	}
	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail("loading %s: %v", *conflist, err)
	}

	rt := &libcni.RuntimeConf{
		ContainerID:    *id,
		NetNS:          *netns,
		IfName:         *ifname,
		CapabilityArgs: map[string]interface{}{},
	}
	if rt.Args, err = parseArgs(*args); err != nil {
		fail("%v", err)
	}
	if len(ports) > 0 {
		rt.CapabilityArgs["portMappings"] = []portMapping(ports)
	}
	if *bw != "" {
		b, err := parseBandwidth(*bw)
		if err != nil {
			fail("%v", err)
		}
		rt.CapabilityArgs["bandwidth"] = b
	}

	var dirs []string
	for _, d := range filepath.SplitList(*path) {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	var cni *libcni.CNIConfig
	if *cacheDir != "" {
		cni = libcni.NewCNIConfigWithCacheDir(dirs, *cacheDir, nil)
	} else {
		cni = libcni.NewCNIConfig(dirs, nil)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	switch *cmd {
	case "add":
		if *netns == "" {
			fail("add needs -netns")
		}
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("ADD: %v", err)
		}
		if err := result.Print(); err != nil {
			fail("printing the result: %v", err)
		}
	case "check":
		if *netns == "" {
			fail("check needs -netns")
		}
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("CHECK: %v", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("DEL: %v", err)
		}
	default:
		fail("-cmd must be add, check or del, not %q", *cmd)
	}
}
