/*
 * tls — the engine's TLS client side (prefix tls_) for STARTTLS sessions.
 *
 * One client context per engine (OpenSSL SSL_CTX: TLS 1.2 or newer, the CA
 * file or the system store for `verify`). Sessions are resumed per
 * destination site: the last session ticket a site gave us (TLS 1.3 tickets
 * arrive after the handshake, through the new-session callback) is offered
 * on the next connection to that site, so a reconnection skips the full
 * handshake. Loop thread only.
 */
#ifndef CARTEIRO_TLS_H
#define CARTEIRO_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tls_client_config {
	const char *ca_file;     /* NULL: the system's default store */
	const char *ca_path;
	size_t cache_max;        /* sites remembered (0 = 10000) */
};

struct tls_client;

struct tls_client *tls_client_new(const struct tls_client_config *c,
	char *err, size_t errlen);
void tls_client_free(struct tls_client *t);

/* A new client SSL on `fd`: SNI = host; with verify, the chain and the
 * host name are checked; a cached session of `site` is offered. */
SSL *tls_client_ssl(struct tls_client *t, int fd, const char *host,
	const char *site, bool verify, char *err, size_t errlen);
/* After a successful handshake: count it (full or resumed). */
void tls_client_handshake_done(struct tls_client *t, SSL *ssl);

struct tls_stats {
	uint64_t full, resumed, failed;
};
void tls_client_stats(const struct tls_client *t, struct tls_stats *s);
void tls_client_failed(struct tls_client *t);

/* Last OpenSSL error as text (queue emptied). */
void tls_error_string(char *buf, size_t len);

#endif
