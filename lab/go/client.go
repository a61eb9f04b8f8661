// A Go crypto/tls client for tlsinspector experiments: one GET, the error verbatim.
package main

import (
	"net"
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net/http"
	"os"
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
	flag.Parse()
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
	conn, err := tls.DialWithDialer(&netDialer, "tcp", *addr, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("HTTP %s\n", resp.Status)
}
