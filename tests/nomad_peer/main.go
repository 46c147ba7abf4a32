// Command nomad-peer is a reference Nomad RPC peer for rpcproxy's tests.
//
// It is built on the libraries a Nomad server is built on (Go's net/rpc, the
// msgpackrpc codec of hashicorp/net-rpc-msgpackrpc over a
// hashicorp/go-msgpack handle, hashicorp/yamux, Go's crypto/tls) so that the
// Python side is checked against Nomad's real codec, multiplexer and TLS stack
// rather than against our own reading of them. It is not a Nomad server: it
// answers Status.Ping, Status.Leader and Status.Peers and nothing else.
//
// Server mode (the default):
//
//	nomad-peer -listen 127.0.0.1:0 [-hang] [-leader ADDR] [-peers A,B]
//	           [-tls-cert F -tls-key F -tls-ca F [-tls-upgrade] [-report-resumption]]
//
// prints "listening HOST:PORT" as its first line on stdout, then serves until
// SIGTERM or SIGINT, when it closes every connection and exits 0. With the
// -tls-* flags it is a Nomad server with tls { rpc = true }: only 0x04
// connections are served (the client must present a certificate signed by
// -tls-ca), and any plain first byte closes the connection, unless
// -tls-upgrade (Nomad's rpc_upgrade_mode) lets plain connections through too.
// -report-resumption logs one line per completed TLS handshake on stderr,
// "tls handshake resumed=true" or "=false" (ConnectionState().DidResume), so
// a test can check that a client's session resumption really happens.
//
// Client mode (the benchmark's side-by-side baseline):
//
//	nomad-peer -call HOST:PORT [-n 1000] [-conn-per-call] [-tls-* ...]
//
// calls Status.Ping n times with msgpackrpc.CallWithCodec, as a Nomad client
// does, and prints one JSON line with the elapsed time.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// The first byte of a Nomad RPC connection says what follows (Nomad's
// helper/pool RPCType values).
const (
	rpcNomad       byte = 0x01
	rpcMultiplex   byte = 0x03
	rpcTLS         byte = 0x04
	rpcMultiplexV2 byte = 0x06
)

func main() {
	var cfg config
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:0", "TCP address to listen on")
	flag.BoolVar(&cfg.hang, "hang", false, "accept connections and never read from or answer them")
	flag.StringVar(&cfg.leader, "leader", "", "what Status.Leader returns (default: this peer's own address)")
	flag.StringVar(&cfg.peers, "peers", "", "comma-separated list Status.Peers returns (default: this peer's own address)")
	flag.DurationVar(&cfg.handshakeTimeout, "handshake-timeout", 5*time.Second,
		"deadline for the first byte and for the TLS handshake (Nomad's rpc_handshake_timeout)")
	flag.StringVar(&cfg.tlsCert, "tls-cert", "", "PEM certificate: serve (or, with -call, present) it over TLS")
	flag.StringVar(&cfg.tlsKey, "tls-key", "", "PEM private key of -tls-cert")
	flag.StringVar(&cfg.tlsCA, "tls-ca", "", "PEM CA that must have signed the other side's certificate")
	flag.BoolVar(&cfg.tlsUpgrade, "tls-upgrade", false,
		"with TLS, still accept plain connections (Nomad's tls.rpc_upgrade_mode)")
	flag.BoolVar(&cfg.reportResumption, "report-resumption", false,
		"log \"tls handshake resumed=true|false\" on stderr after every completed TLS handshake")
	flag.StringVar(&cfg.call, "call", "", "client mode: ping the peer at this address and exit")
	flag.IntVar(&cfg.count, "n", 1000, "client mode: how many Status.Ping calls")
	flag.BoolVar(&cfg.connPerCall, "conn-per-call", false, "client mode: a new connection for every call")
	flag.StringVar(&cfg.serverName, "server-name", "server.global.nomad",
		"client mode: the name the server's certificate must carry")
	flag.Parse()
	log.SetPrefix("nomad-peer: ")
	log.SetFlags(0)

	if cfg.call != "" {
		if err := runClient(&cfg); err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := runServer(&cfg); err != nil {
		log.Fatal(err)
	}
}

// config holds the command line of either mode.
type config struct {
	listen           string
	hang             bool
	leader           string
	peers            string
	handshakeTimeout time.Duration
	tlsCert          string
	tlsKey           string
	tlsCA            string
	tlsUpgrade       bool
	reportResumption bool
	call             string
	count            int
	connPerCall      bool
	serverName       string
}

func (c *config) tlsEnabled() bool {
	return c.tlsCert != "" || c.tlsKey != "" || c.tlsCA != ""
}

func runServer(cfg *config) error {
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	self := ln.Addr().String()
	leader := cfg.leader
	if leader == "" {
		leader = self
	}
	peers := []string{self}
	if cfg.peers != "" {
		peers = strings.Split(cfg.peers, ",")
	}
	srv, err := newServer(cfg, leader, peers)
	if err != nil {
		ln.Close()
		return err
	}

	// Signals are caught before the address goes out: whoever started us
	// may stop us the moment it has read the line, and that must be a
	// clean exit, not the default action's death.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	// The address goes out before the first accept, so whoever started us
	// can connect as soon as it has read the line.
	fmt.Printf("listening %s\n", self)
	go func() {
		sig := <-stop
		log.Printf("%s: closing", sig)
		srv.shutdown(ln)
	}()

	for {
		conn, err := ln.Accept()
		if err != nil {
			if srv.closing() {
				return nil
			}
			// A transient accept error (out of descriptors) must not end
			// the peer; a short pause stops a hot loop.
			log.Printf("accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !srv.track(conn) {
			return nil
		}
		if cfg.hang {
			// Held, never read: a kernel-accepted connection that nobody
			// answers, like a wedged server. track keeps a reference so
			// the garbage collector does not close it.
			continue
		}
		go srv.serveConn(conn)
	}
}
