package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/rpc"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/codec"
	msgpackrpc "github.com/hashicorp/net-rpc-msgpackrpc"
	"github.com/hashicorp/yamux"
)

// newHandle returns a MessagePack handle set as Nomad's (nomad/structs
// MsgpackHandle): str decodes to string, and a map decoded into an
// interface{} becomes map[string]interface{}. WriteExt stays off, as in
// Nomad, so []byte is written as str and bin is not what a string field
// accepts.
func newHandle() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.RawToString = true
	h.MapType = reflect.TypeOf(map[string]interface{}(nil))
	return h
}

// server is one listening peer: its RPC services, its TLS setup, and the
// connections it holds open, so that shutdown can close them all.
type server struct {
	cfg    *config
	rpc    *rpc.Server
	handle *codec.MsgpackHandle
	tls    *tls.Config // nil when the peer serves no TLS

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newServer(cfg *config, leader string, peers []string) (*server, error) {
	s := &server{
		cfg:    cfg,
		rpc:    rpc.NewServer(),
		handle: newHandle(),
		conns:  make(map[net.Conn]struct{}),
	}
	if err := s.rpc.RegisterName("Status", &Status{leader: leader, peers: peers}); err != nil {
		return nil, err
	}
	if cfg.tlsEnabled() {
		tc, err := serverTLS(cfg)
		if err != nil {
			return nil, err
		}
		s.tls = tc
	}
	return s, nil
}

// serverTLS requires and verifies a client certificate signed by the CA, as
// Nomad does with tls { rpc = true, verify_https_client ... } on its RPC port.
func serverTLS(cfg *config) (*tls.Config, error) {
	if cfg.tlsCert == "" || cfg.tlsKey == "" || cfg.tlsCA == "" {
		return nil, errors.New("TLS needs all of -tls-cert, -tls-key and -tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("loading -tls-cert/-tls-key: %w", err)
	}
	pool, err := loadCA(cfg.tlsCA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading -tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-tls-ca %s holds no PEM certificate", path)
	}
	return pool, nil
}

// track remembers an accepted connection; false (and the connection closed)
// once shutdown has begun.
func (s *server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *server) forget(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

func (s *server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// shutdown stops accepting and closes every connection, which ends every
// goroutine serving one (their reads fail).
func (s *server) shutdown(ln net.Listener) {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = map[net.Conn]struct{}{}
	s.mu.Unlock()
	ln.Close()
	for c := range conns {
		c.Close()
	}
}

// serveConn reads a connection's first byte and hands the connection on,
// as Nomad's rpcHandler.handleConn does; a 0x04 wraps it in TLS and reads
// the next byte inside. However it ends, the TCP connection is closed and
// forgotten.
func (s *server) serveConn(raw net.Conn) {
	defer s.forget(raw)
	who := raw.RemoteAddr()

	// Nomad bounds how long an unauthenticated peer may sit before its
	// first byte and before the end of its TLS handshake.
	first, ok := readFirst(raw, s.cfg.handshakeTimeout)
	if !ok {
		return
	}
	// With TLS configured, Nomad (tls { rpc = true }) closes any plain
	// connection unless upgrade mode lets both through.
	if s.tls != nil && first != rpcTLS && !s.cfg.tlsUpgrade {
		log.Printf("%s: plain byte 0x%02x refused: TLS is required", who, first)
		return
	}
	if first != rpcTLS {
		s.route(raw, first)
		return
	}
	if s.tls == nil {
		log.Printf("%s: TLS attempted, peer not configured for TLS", who)
		return
	}
	tc := tls.Server(raw, s.tls)
	if s.cfg.handshakeTimeout > 0 {
		tc.SetDeadline(time.Now().Add(s.cfg.handshakeTimeout))
	}
	if err := tc.Handshake(); err != nil {
		log.Printf("%s: TLS handshake: %v", who, err)
		return
	}
	tc.SetDeadline(time.Time{})
	if s.cfg.reportResumption {
		// One line per handshake, in accept order within a connection's
		// goroutine: tests count the lines, they do not pair them with
		// connections.
		log.Printf("tls handshake resumed=%t", tc.ConnectionState().DidResume)
	}
	// The peer has authenticated: Nomad sets no deadline on the byte read
	// inside TLS, so neither does this peer.
	if first, ok = readFirst(tc, 0); !ok {
		return
	}
	if first == rpcTLS {
		// TLS inside TLS, without end, is refused as Nomad refuses it.
		log.Printf("%s: TLS inside TLS refused", who)
		return
	}
	s.route(tc, first)
}

// readFirst reads one byte within timeout (none when 0) and lifts the
// deadline again, since what follows sets its own pace.
func readFirst(conn net.Conn, timeout time.Duration) (byte, bool) {
	if timeout > 0 {
		conn.SetDeadline(time.Now().Add(timeout))
	}
	var buf [1]byte
	if _, err := io.ReadFull(conn, buf[:]); err != nil {
		if err != io.EOF {
			log.Printf("%s: reading the first byte: %v", conn.RemoteAddr(), err)
		}
		return 0, false
	}
	if timeout > 0 {
		conn.SetDeadline(time.Time{})
	}
	return buf[0], true
}

// route serves conn by its first byte.
func (s *server) route(conn net.Conn, first byte) {
	switch first {
	case rpcNomad:
		s.serveRPC(conn)
	case rpcMultiplex:
		s.serveMultiplex(conn, false)
	case rpcMultiplexV2:
		s.serveMultiplex(conn, true)
	default:
		log.Printf("%s: unrecognised first byte 0x%02x", conn.RemoteAddr(), first)
	}
}

// serveRPC answers requests one after another until one cannot be read, as
// Nomad's handleNomadConn does: net/rpc's ServeRequest answers an unknown
// method with an Error and then reports it, and an undecodable request ends
// the connection without an answer; either way the connection closes.
func (s *server) serveRPC(conn io.ReadWriteCloser) {
	defer conn.Close()
	// Buffered both ways, as Nomad's pool.NewServerCodec.
	cc := msgpackrpc.NewCodecFromHandle(true, true, conn, s.handle)
	for {
		if err := s.rpc.ServeRequest(cc); err != nil {
			if err != io.EOF && !strings.Contains(err.Error(), "closed") {
				log.Printf("rpc: %v", err)
			}
			return
		}
	}
}

// serveMultiplex runs a yamux server session on conn. With 0x03 every
// stream is plain RPC at once; with 0x06 (what Nomad's own pool dials) every
// stream starts with its own type byte, of which this peer knows 0x01 only
// (0x05, streaming RPC, ends the session as any unknown byte does in Nomad).
func (s *server) serveMultiplex(conn net.Conn, v2 bool) {
	defer conn.Close()
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = os.Stderr
	session, err := yamux.Server(conn, ycfg)
	if err != nil {
		log.Printf("yamux: %v", err)
		return
	}
	defer session.Close()
	for {
		stream, err := session.Accept()
		if err != nil {
			if err != io.EOF && !strings.Contains(err.Error(), "closed") {
				log.Printf("yamux accept: %v", err)
			}
			return
		}
		if v2 {
			// Read in the accept loop, as Nomad does.
			first := make([]byte, 1)
			if _, err := io.ReadFull(stream, first); err != nil {
				stream.Close()
				return
			}
			if first[0] != rpcNomad {
				log.Printf("yamux stream: unsupported first byte 0x%02x", first[0])
				stream.Close()
				return
			}
		}
		go s.serveRPC(stream)
	}
}

// GenericRequest is the part of Nomad's structs.GenericRequest (its
// QueryOptions) that a Status call may carry; other keys are skipped.
type GenericRequest struct {
	Region     string
	Namespace  string
	AllowStale bool
	AuthToken  string
}

// Status is Nomad's Status endpoint, reduced to what a client's RPC proxy
// uses.
type Status struct {
	leader string
	peers  []string
}

// Ping answers nothing but success: Nomad's Status.Ping takes an empty
// struct and fills an empty struct.
func (s *Status) Ping(args struct{}, reply *struct{}) error {
	return nil
}

// Leader returns the configured leader's RPC address.
func (s *Status) Leader(args *GenericRequest, reply *string) error {
	*reply = s.leader
	return nil
}

// Peers returns the configured Raft peer addresses.
func (s *Status) Peers(args *GenericRequest, reply *[]string) error {
	*reply = append([]string(nil), s.peers...)
	return nil
}
