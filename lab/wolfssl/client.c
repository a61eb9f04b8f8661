/* A wolfSSL client for tlsinspector experiments: one GET, wolfSSL's error code verbatim.
 * usage: client HOST PORT CAFILE TLS(1.2|1.3|any) SNI|- [KEYLOG]
 *
 * KEYLOG: Debian's libwolfssl has no key-log callback (HAVE_SECRET_CALLBACK is
 * off), so TLS 1.3 secrets cannot be had. For TLS 1.2 the client appends a
 * CLIENT_RANDOM line after the handshake (the master secret is known then): the
 * handshake's own Finished records are logged before their key arrives. The
 * session comes from wolfSSL_get1_session (a copy that owns the master secret):
 * wolfSSL_get_session's master key reads as zeros without a session cache.
 *
 * Verification: Debian's libwolfssl verifies nothing unless asked (a client that
 * accepts any certificate would pass every interception scenario), so the peer's
 * chain is checked against CAFILE and, with an SNI, its name against it, as an
 * application using wolfSSL must set up itself. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void write_keylog(WOLFSSL *ssl, const char *path) {
    WOLFSSL_SESSION *sess = wolfSSL_get1_session(ssl);
    unsigned char random[32], master[48];
    if (sess == NULL || wolfSSL_version(ssl) != TLS1_2_VERSION) return;
    if (wolfSSL_get_client_random(ssl, random, sizeof random) != sizeof random) return;
    int n = wolfSSL_SESSION_get_master_key(sess, master, sizeof master);
    wolfSSL_SESSION_free(sess);
    if (n != (int)sizeof master) return;
    FILE *f = fopen(path, "a");
    if (f == NULL) return;
    fputs("CLIENT_RANDOM ", f);
    for (int i = 0; i < 32; i++) fprintf(f, "%02x", random[i]);
    fputc(' ', f);
    for (int i = 0; i < 48; i++) fprintf(f, "%02x", master[i]);
    fputc('\n', f);
    fclose(f);
}

static int fail(WOLFSSL *ssl, int ret, const char *what) {
    int err = wolfSSL_get_error(ssl, ret);
    char buf[WOLFSSL_MAX_ERROR_SZ];
    wolfSSL_ERR_error_string((unsigned long)err, buf);
    printf("wolfSSL error %d during %s: %s\n", err, what, buf);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage: client HOST PORT CAFILE TLS SNI|-\n"); return 2; }
    wolfSSL_Init();
    WOLFSSL_METHOD *method = strcmp(argv[4], "1.2") == 0 ? wolfTLSv1_2_client_method()
                           : strcmp(argv[4], "1.3") == 0 ? wolfTLSv1_3_client_method()
                           : wolfSSLv23_client_method();
    WOLFSSL_CTX *ctx = wolfSSL_CTX_new(method);
    if (wolfSSL_CTX_load_verify_locations(ctx, argv[3], NULL) != WOLFSSL_SUCCESS) {
        printf("cannot load CA %s\n", argv[3]); return 2;
    }
    wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, NULL);
    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(argv[1], argv[2], &hints, &res) != 0) { printf("cannot resolve\n"); return 2; }
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    struct timeval tv = {15, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) { perror("connect"); return 1; }
    WOLFSSL *ssl = wolfSSL_new(ctx);
    if (strcmp(argv[5], "-") != 0) {
        wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, argv[5], (unsigned short)strlen(argv[5]));
        wolfSSL_check_domain_name(ssl, argv[5]);
    }
    wolfSSL_set_fd(ssl, fd);
    int ret = wolfSSL_connect(ssl);
    if (ret != WOLFSSL_SUCCESS) return fail(ssl, ret, "wolfSSL_connect");
    if (argc > 6) write_keylog(ssl, argv[6]);
    const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if ((ret = wolfSSL_write(ssl, req, (int)strlen(req))) <= 0) return fail(ssl, ret, "write");
    char buf[4096];
    int n = wolfSSL_read(ssl, buf, sizeof buf - 1);
    if (n <= 0) return fail(ssl, n, "read");
    buf[n] = 0;
    char *eol = strstr(buf, "\r\n");
    if (eol) *eol = 0;
    printf("%s\n", buf);
    wolfSSL_shutdown(ssl);
    wolfSSL_free(ssl);
    wolfSSL_CTX_free(ctx);
    close(fd);
    return 0;
}
