// A Go crypto/tls client for tlsinspector experiments: one GET, the error verbatim.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

var netDialer = net.Dialer{Timeout: 10 * time.Second}

func main() {
	addr := flag.String("connect", "", "host:port")
	ca := flag.String("ca", "", "CA PEM")
	sni := flag.String("sni", "localhost", "server name (empty: no SNI)")
	minV := flag.String("min", "1.2", "minimum TLS version")
	maxV := flag.String("max", "1.3", "maximum TLS version")
	url := flag.String("url", "", "fetch this URL with net/http instead (honours HTTPS_PROXY)")
	keylog := flag.String("keylog", "", "append the session secrets here (NSS key log format)")
	alpn := flag.String("alpn", "", "comma-separated ALPN protocols to offer")
	timeout := flag.Duration("timeout", 10*time.Second, "connect, handshake and read timeout")
	waitMs := flag.Int("wait-ms", 0, "idle this long after the handshake before the request")
	resume := flag.Bool("resume", false, "connect twice, the second time resuming the session")
	flag.Parse()
	netDialer.Timeout = *timeout
	versions := map[string]uint16{"1.0": tls.VersionTLS10, "1.1": tls.VersionTLS11,
		"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}
	pem, err := os.ReadFile(*ca)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool, ServerName: *sni,
		MinVersion: versions[*minV], MaxVersion: versions[*maxV]}
	if *alpn != "" {
		cfg.NextProtos = strings.Split(*alpn, ",")
	}
	if *keylog != "" {
		f, err := os.OpenFile(*keylog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0600)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer f.Close()
		cfg.KeyLogWriter = f
	}
	if *sni == "" {
		// No SNI on the wire: verify the chain ourselves against the CA.
		cfg.InsecureSkipVerify = true
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			cert, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"})
			return err
		}
	}
	if *url != "" {
		client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment, TLSClientConfig: cfg}}
		resp, err := client.Get(*url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		resp.Body.Close()
		fmt.Printf("HTTP %s\n", resp.Status)
		return
	}
	if *alpn != "" {
		// net/http speaks HTTP/2 when ALPN selects h2 (ForceAttemptHTTP2). The TLS
		// dial is ours, with cfg as given: net/http's own would add http/1.1 to an
		// offer of h2 alone, and the offer must be exactly the -alpn list. The idle
		// wait comes after the handshake, as for the other clients.
		rounds := 1
		if *resume {
			// A second connection (no keep-alive) resuming the first's session.
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			rounds = 2
		}
		tr := &http.Transport{ForceAttemptHTTP2: true, DisableKeepAlives: *resume,
			DialTLSContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				raw, err := netDialer.DialContext(ctx, network, *addr)
				if err != nil {
					return nil, err
				}
				tc := tls.Client(raw, cfg.Clone())
				if err := tc.HandshakeContext(ctx); err != nil {
					raw.Close()
					return nil, err
				}
				if *waitMs > 0 {
					time.Sleep(time.Duration(*waitMs) * time.Millisecond)
				}
				return tc, nil
			}}
		client := &http.Client{Timeout: *timeout + time.Duration(*waitMs)*time.Millisecond,
			Transport: tr}
		for i := 0; i < rounds; i++ {
			resp, err := client.Get("https://localhost/")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			fmt.Printf("HTTP %s alpn=%s proto=%s resumed=%t\n", resp.Status,
				resp.TLS.NegotiatedProtocol, resp.Proto, resp.TLS.DidResume)
		}
		return
	}
	rounds := 1
	if *resume {
		// A second connection resuming the first's session (tickets or IDs).
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		rounds = 2
	}
	for i := 0; i < rounds; i++ {
		once(cfg, *addr, *timeout, *waitMs)
	}
}

func once(cfg *tls.Config, addr string, timeout time.Duration, waitMs int) {
	conn, err := tls.DialWithDialer(&netDialer, "tcp", addr, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	if waitMs > 0 {
		// An idle client (a kept-alive connection between requests).
		time.Sleep(time.Duration(waitMs) * time.Millisecond)
	}
	conn.SetDeadline(time.Now().Add(timeout))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	st := conn.ConnectionState()
	fmt.Printf("HTTP %s alpn=%s proto=%s resumed=%t\n", resp.Status, st.NegotiatedProtocol,
		resp.Proto, st.DidResume)
}
