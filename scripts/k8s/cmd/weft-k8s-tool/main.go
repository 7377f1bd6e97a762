// Command weft-k8s-tool is the cluster harness's helper (scripts/k8s-cluster.sh): test
// infrastructure only, standard library only.
//
//	weft-k8s-tool pki --dir DIR --apiserver IP --service-ip IP --node NAME=IP ...
//	    a fresh cluster CA, every component's certificate and kubeconfig, the service
//	    account signing key pair;
//	weft-k8s-tool image --file Dockerfile --context DIR --tag NAME ... --out IMAGE.tar
//	    a container image built from a Dockerfile without a container engine or a registry
//	    (image.go says how), written as a docker-archive that `ctr images import` reads;
//	weft-k8s-tool proxy --listen 127.0.0.1:PORT --netns /run/netns/NS --to IP:PORT
//	    a TCP forwarder from this namespace into another one (the API server for kubectl).
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "pki":
		err = pkiMain(os.Args[2:])
	case "image":
		err = imageMain(os.Args[2:])
	case "proxy":
		err = proxyMain(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "weft-k8s-tool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: weft-k8s-tool pki|image|proxy [flags] (see -h of each)")
	os.Exit(2)
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return fmt.Sprint(*m) }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
