/* tls — see tls.h. */
#include "engine/tls.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/htab.h"
#include "engine/mem.h"

struct tls_client {
	SSL_CTX *ctx;
	ht_map sessions;          /* site → SSL_SESSION* */
	size_t cache_max;
	struct tls_stats st;
	int ex_idx;
};

/* Per-SSL data: where a new session ticket belongs. */
struct tag {
	struct tls_client *t;
	char site[];
};

void tls_error_string(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();
	if (!e) {
		snprintf(buf, len, "TLS error");
		return;
	}
	ERR_error_string_n(e, buf, len);
	ERR_clear_error();
}

static void drop_sessions(struct tls_client *t)
{
	size_t pos = 0;
	const char *k;
	void *v;
	while (ht_next(&t->sessions, &pos, &k, &v))
		SSL_SESSION_free(v);
	ht_free(&t->sessions);
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct tls_client *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	struct tag *g = SSL_get_ex_data(ssl, t->ex_idx);
	if (!g || !g->site[0])
		return 0;
	if (t->sessions.len >= t->cache_max && !ht_get(&t->sessions, g->site))
		drop_sessions(t);
	SSL_SESSION *old = ht_get(&t->sessions, g->site);
	if (old)
		SSL_SESSION_free(old);
	ht_put(&t->sessions, g->site, sess);
	return 1;   /* we keep the reference */
}

static void free_tag(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
	long argl, void *argp)
{
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	free(ptr);
}

struct tls_client *tls_client_new(const struct tls_client_config *c,
	char *err, size_t errlen)
{
	struct tls_client *t = mem_calloc(1, sizeof *t);
	t->cache_max = c->cache_max ? c->cache_max : 10000;
	t->ctx = SSL_CTX_new(TLS_client_method());
	if (!t->ctx) {
		tls_error_string(err, errlen);
		free(t);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
		SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_CLIENT |
		SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(t->ctx, new_session_cb);
	SSL_CTX_set_app_data(t->ctx, t);
	t->ex_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, free_tag);
	int ok = (c->ca_file || c->ca_path)
		? SSL_CTX_load_verify_locations(t->ctx, c->ca_file, c->ca_path)
		: SSL_CTX_set_default_verify_paths(t->ctx);
	if (ok != 1) {
		char e[256];
		tls_error_string(e, sizeof e);
		snprintf(err, errlen, "TLS: cannot load the CA file %s: %s",
			c->ca_file ? c->ca_file : "(system)", e);
		SSL_CTX_free(t->ctx);
		free(t);
		return NULL;
	}
	return t;
}

void tls_client_free(struct tls_client *t)
{
	if (!t)
		return;
	drop_sessions(t);
	SSL_CTX_free(t->ctx);
	free(t);
}

SSL *tls_client_ssl(struct tls_client *t, int fd, const char *host,
	const char *site, bool verify, char *err, size_t errlen)
{
	SSL *ssl = SSL_new(t->ctx);
	if (!ssl) {
		tls_error_string(err, errlen);
		return NULL;
	}
	size_t sl = site ? strlen(site) : 0;
	struct tag *g = mem_alloc(sizeof *g + sl + 1);
	g->t = t;
	memcpy(g->site, site ? site : "", sl + 1);
	SSL_set_ex_data(ssl, t->ex_idx, g);
	SSL_set_fd(ssl, fd);
	SSL_set_connect_state(ssl);
	/* SNI only for names, not address literals. */
	if (host && *host && !strchr(host, ':') &&
	    strspn(host, "0123456789.") != strlen(host))
		SSL_set_tlsext_host_name(ssl, host);
	if (verify) {
		SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
		X509_VERIFY_PARAM *p = SSL_get0_param(ssl);
		X509_VERIFY_PARAM_set_hostflags(p,
			X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (!X509_VERIFY_PARAM_set1_host(p, host, 0)) {
			snprintf(err, errlen, "TLS: bad host name for verification");
			SSL_free(ssl);
			return NULL;
		}
	} else {
		SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
	}
	SSL_SESSION *s = site ? ht_get(&t->sessions, site) : NULL;
	if (s)
		SSL_set_session(ssl, s);
	return ssl;
}

void tls_client_handshake_done(struct tls_client *t, SSL *ssl)
{
	if (SSL_session_reused(ssl))
		t->st.resumed++;
	else
		t->st.full++;
}

void tls_client_failed(struct tls_client *t)
{
	t->st.failed++;
}

void tls_client_stats(const struct tls_client *t, struct tls_stats *s)
{
	*s = t->st;
}
