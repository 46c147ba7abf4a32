package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"os"
	"time"

	"github.com/hashicorp/go-msgpack/codec"
	msgpackrpc "github.com/hashicorp/net-rpc-msgpackrpc"
)

// runClient pings cfg.call cfg.count times the way a Nomad client's RPC
// proxy does (a 0x01 connection, msgpackrpc.CallWithCodec on the Nomad
// handle) and prints {"calls", "elapsed_s", "per_call_us", "conn_per_call"}.
// With -conn-per-call each ping dials, (with TLS) handshakes and closes, the
// cost a fresh ping pays; without it one connection carries them all.
func runClient(cfg *config) error {
	if cfg.count < 1 {
		return errors.New("-n must be at least 1")
	}
	var tc *tls.Config
	if cfg.tlsEnabled() {
		var err error
		if tc, err = clientTLS(cfg); err != nil {
			return err
		}
	}
	handle := newHandle()

	start := time.Now()
	var cc rpc.ClientCodec
	for i := 0; i < cfg.count; i++ {
		if cc == nil {
			var err error
			if cc, err = dial(cfg.call, tc, handle); err != nil {
				return err
			}
		}
		if err := msgpackrpc.CallWithCodec(cc, "Status.Ping", struct{}{}, &struct{}{}); err != nil {
			cc.Close()
			return fmt.Errorf("Status.Ping %d: %w", i+1, err)
		}
		if cfg.connPerCall {
			cc.Close()
			cc = nil
		}
	}
	elapsed := time.Since(start)
	if cc != nil {
		cc.Close()
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"calls":         cfg.count,
		"elapsed_s":     elapsed.Seconds(),
		"per_call_us":   elapsed.Seconds() * 1e6 / float64(cfg.count),
		"conn_per_call": cfg.connPerCall,
	})
}

// dial opens one RPC connection as Nomad's pool does: 0x04 and a TLS
// handshake first when TLS is on, then 0x01 and the msgpackrpc codec.
func dial(addr string, tc *tls.Config, handle *codec.MsgpackHandle) (rpc.ClientCodec, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		tcp.SetNoDelay(true)
	}
	if tc != nil {
		if _, err := conn.Write([]byte{rpcTLS}); err != nil {
			conn.Close()
			return nil, err
		}
		tlsConn := tls.Client(conn, tc)
		if err := tlsConn.Handshake(); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tlsConn
	}
	if _, err := conn.Write([]byte{rpcNomad}); err != nil {
		conn.Close()
		return nil, err
	}
	return msgpackrpc.NewCodecFromHandle(true, true, conn, handle), nil
}

// clientTLS presents -tls-cert and checks the server's certificate against
// -tls-ca and the name -server-name (Nomad's verify_server_hostname).
func clientTLS(cfg *config) (*tls.Config, error) {
	if cfg.tlsCA == "" {
		return nil, errors.New("TLS needs -tls-ca")
	}
	pool, err := loadCA(cfg.tlsCA)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{RootCAs: pool, ServerName: cfg.serverName, MinVersion: tls.VersionTLS12}
	if cfg.tlsCert != "" || cfg.tlsKey != "" {
		cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("loading -tls-cert/-tls-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
