// A Go crypto/tls HTTPS server for tlsinspector experiments.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "listen address")
	cert := flag.String("cert", "", "certificate PEM")
	key := flag.String("key", "", "key PEM")
	minV := flag.String("min", "1.2", "minimum TLS version")
	maxV := flag.String("max", "1.3", "maximum TLS version")
	ecdheOnly := flag.Bool("ecdhe-only", false, "TLS 1.2: only ECDHE suites")
	keylog := flag.String("keylog", "", "append the session secrets here (NSS key log format)")
	h2 := flag.Bool("h2", false, "offer ALPN h2 and http/1.1 and serve HTTP/2")
	suites := flag.String("suites", "", "TLS 1.2: only these cipher suites (IANA names, comma-separated)")
	www := flag.String("www", "", "serve this directory's files (bench/quick.py: many concurrent downloads)")
	flag.Parse()
	versions := map[string]uint16{"1.0": tls.VersionTLS10, "1.1": tls.VersionTLS11,
		"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair},
		MinVersion: versions[*minV], MaxVersion: versions[*maxV]}
	if *keylog != "" {
		f, err := os.OpenFile(*keylog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0600)
		if err != nil {
			log.Fatal(err)
		}
		defer f.Close()
		cfg.KeyLogWriter = f
	}
	if *ecdheOnly {
		cfg.CipherSuites = []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
		}
	}
	if *suites != "" {
		byName := map[string]uint16{}
		for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
			byName[cs.Name] = cs.ID
		}
		cfg.CipherSuites = nil
		for _, name := range strings.Split(*suites, ",") {
			id, ok := byName[name]
			if !ok {
				log.Fatalf("unknown cipher suite %q", name)
			}
			cfg.CipherSuites = append(cfg.CipherSuites, id)
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	os.Stdout.Sync()
	var handler http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello from the go server\n"))
	})
	if *www != "" {
		handler = http.FileServer(http.Dir(*www))
	}
	srv := &http.Server{Handler: handler, TLSConfig: cfg,
		ErrorLog: log.New(os.Stderr, "", 0)}
	if *h2 {
		// ServeTLS configures net/http's HTTP/2 and adds h2 to NextProtos.
		cfg.NextProtos = []string{"h2", "http/1.1"}
		log.Fatal(srv.ServeTLS(ln, "", ""))
	}
	log.Fatal(srv.Serve(tls.NewListener(ln, cfg)))
}
