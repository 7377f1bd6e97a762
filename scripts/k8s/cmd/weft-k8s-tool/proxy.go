package main

// A TCP forwarder from this network namespace (the host's loopback) to an address inside
// another one: the cluster's API server lives in the control-plane node's namespace, and
// `kubectl` on the host reaches it through 127.0.0.1:PORT. The connections to the target
// are made from a socket created inside the target namespace (setns on a locked thread,
// socket, back), so the host needs no route or interface into the cluster's underlay.

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"
)

func proxyMain(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:16443", "address to listen on (this namespace)")
	netns := fs.String("netns", "", "the target's network namespace (a /run/netns file)")
	to := fs.String("to", "", "target address inside that namespace")
	_ = fs.Parse(args)
	if *netns == "" || *to == "" {
		return fmt.Errorf("--netns and --to are required")
	}
	dialer, err := dialerIn(*netns)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "proxy: %s -> %s in %s\n", *listen, *to, *netns)
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			t, err := dialer(*to)
			if err != nil {
				fmt.Fprintf(os.Stderr, "proxy: dial %s: %v\n", *to, err)
				return
			}
			defer t.Close()
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go pipe(t, c)
			go pipe(c, t)
			<-done
			<-done
		}()
	}
}

// dialerIn returns a function that dials TCP from inside the network namespace file ns.
// One OS thread is moved into the namespace for good and serves every dial.
func dialerIn(ns string) (func(string) (net.Conn, error), error) {
	type req struct {
		addr  string
		reply chan result
	}
	reqs := make(chan req)
	ready := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the program
		f, err := os.Open(ns)
		if err != nil {
			ready <- err
			return
		}
		const sysSetns = 308 // x86_64
		if _, _, e := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
			ready <- fmt.Errorf("setns %s: %v", ns, e)
			return
		}
		f.Close()
		ready <- nil
		for r := range reqs {
			r.reply <- dialHere(r.addr)
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return func(addr string) (net.Conn, error) {
		r := req{addr, make(chan result, 1)}
		reqs <- r
		res := <-r.reply
		return res.conn, res.err
	}, nil
}

type result struct {
	conn net.Conn
	err  error
}

// dialHere makes the socket on the calling (namespaced) thread with raw syscalls, so that
// the Go runtime cannot move the socket's creation to another thread; the connected
// socket then becomes an ordinary net.Conn.
func dialHere(addr string) result {
	ta, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return result{nil, err}
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return result{nil, err}
	}
	var sa syscall.SockaddrInet4
	copy(sa.Addr[:], ta.IP.To4())
	sa.Port = ta.Port
	// A blocking connect with a send timeout as its limit.
	tv := syscall.NsecToTimeval(int64(10 * time.Second))
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	if err := syscall.Connect(fd, &sa); err != nil {
		syscall.Close(fd)
		return result{nil, err}
	}
	f := os.NewFile(uintptr(fd), "proxy")
	defer f.Close()
	c, err := net.FileConn(f) // dups the descriptor
	return result{c, err}
}
