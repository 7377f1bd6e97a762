package main

// The cluster's PKI, made fresh for every cluster: one CA signs the API server's serving
// certificate, every client certificate (components, nodes, the admin) and the kubelets'
// serving certificates; a separate key pair signs service account tokens. ECDSA P-256
// throughout (fast to generate; accepted everywhere in Kubernetes).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func pkiMain(args []string) error {
	fs := flag.NewFlagSet("pki", flag.ExitOnError)
	dir := fs.String("dir", "", "output directory (created)")
	apiserver := fs.String("apiserver", "", "the API server's address (IP), as nodes dial it")
	serviceIP := fs.String("service-ip", "", "the kubernetes Service's ClusterIP")
	dnsDomain := fs.String("cluster-domain", "cluster.local", "the cluster DNS domain")
	var nodes multiFlag
	fs.Var(&nodes, "node", "NAME=IP of a node (repeatable)")
	_ = fs.Parse(args)
	if *dir == "" || *apiserver == "" || *serviceIP == "" || len(nodes) == 0 {
		return fmt.Errorf("--dir, --apiserver, --service-ip and at least one --node are required")
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	ca, err := newCA()
	if err != nil {
		return err
	}
	if err := writePair(*dir, "ca", ca); err != nil {
		return err
	}
	server := "https://" + net.JoinHostPort(*apiserver, "6443")

	// The API server: every name and address it is reached by, from nodes, pods (the
	// kubernetes Service) and the control-plane node itself.
	apiNames := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc." + *dnsDomain, "localhost"}
	apiIPs := []net.IP{net.ParseIP(*apiserver), net.ParseIP(*serviceIP), net.ParseIP("127.0.0.1")}
	p, err := issue(ca, "kube-apiserver", nil, apiNames, apiIPs, true)
	if err != nil {
		return err
	}
	if err := writePair(*dir, "apiserver", p); err != nil {
		return err
	}
	// The API server's client certificate towards kubelets (logs, exec, port-forward).
	p, err = issue(ca, "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil, false)
	if err != nil {
		return err
	}
	if err := writePair(*dir, "apiserver-kubelet-client", p); err != nil {
		return err
	}

	// Clients with a kubeconfig each. The user names are the ones the default RBAC
	// bindings (and the Node authorizer) expect.
	clients := []struct{ file, cn, org string }{
		{"admin", "weft-k8s-admin", "system:masters"},
		{"kube-controller-manager", "system:kube-controller-manager", ""},
		{"kube-scheduler", "system:kube-scheduler", ""},
		{"kube-proxy", "system:kube-proxy", ""},
	}
	for _, n := range nodes {
		name, _, _ := strings.Cut(n, "=")
		clients = append(clients, struct{ file, cn, org string }{"kubelet-" + name, "system:node:" + name, "system:nodes"})
	}
	for _, c := range clients {
		var orgs []string
		if c.org != "" {
			orgs = []string{c.org}
		}
		p, err := issue(ca, c.cn, orgs, nil, nil, false)
		if err != nil {
			return err
		}
		if err := writePair(*dir, c.file, p); err != nil {
			return err
		}
		if err := writeKubeconfig(filepath.Join(*dir, c.file+".kubeconfig"), server, ca, p); err != nil {
			return err
		}
	}

	// Each kubelet's serving certificate, for its node address and name.
	for _, n := range nodes {
		name, ip, ok := strings.Cut(n, "=")
		if !ok || net.ParseIP(ip) == nil {
			return fmt.Errorf("--node %q: want NAME=IP", n)
		}
		p, err := issue(ca, name, nil, []string{name}, []net.IP{net.ParseIP(ip)}, true)
		if err != nil {
			return err
		}
		if err := writePair(*dir, "kubelet-"+name+"-serving", p); err != nil {
			return err
		}
	}

	// Service account token signing.
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	priv, err := x509.MarshalECPrivateKey(sa)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(*dir, "sa.key"), "EC PRIVATE KEY", priv, 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(*dir, "sa.pub"), "PUBLIC KEY", pub, 0o644)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func newCA() (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "weft-k8s-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert, key, der}, nil
}

// issue signs a certificate for cn (organizations = groups) with the given SANs; a
// serving certificate also allows server auth.
func issue(ca *keyPair, cn string, orgs, dns []string, ips []net.IP, serving bool) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if serving {
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  usage,
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert, key, der}, nil
}

func pemBytes(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func writePEM(path, kind string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pemBytes(kind, der), mode)
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pemBytes("EC PRIVATE KEY", der), nil
}

// writePair writes NAME.crt and NAME.key.
func writePair(dir, name string, p *keyPair) error {
	if err := writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", p.der, 0o644); err != nil {
		return err
	}
	k, err := keyPEM(p.key)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".key"), k, 0o600)
}

func writeKubeconfig(path, server string, ca, p *keyPair) error {
	k, err := keyPEM(p.key)
	if err != nil {
		return err
	}
	b64 := base64.StdEncoding.EncodeToString
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: weft-k8s
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: weft-k8s
  context:
    cluster: weft-k8s
    user: %s
current-context: weft-k8s
`, server, b64(pemBytes("CERTIFICATE", ca.der)), p.cert.Subject.CommonName,
		b64(pemBytes("CERTIFICATE", p.der)), b64(k), p.cert.Subject.CommonName)
	return os.WriteFile(path, []byte(text), 0o600)
}
