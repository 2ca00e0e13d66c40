/*
 * dkim — DKIM signing (RFC 6376), rsa-sha256 and ed25519-sha256 (RFC 8463).
 *
 * Contract
 *   dkim_signer_new() parses the PEM key once; the signer is immutable
 *   afterwards and shared read-only by every render thread. dkim_sign()
 *   allocates its EVP contexts per call (OpenSSL 3 allows concurrent use of
 *   one EVP_PKEY from several contexts), computes the relaxed body hash once
 *   and makes one DKIM-Signature header per signer.
 *
 * Choices (see docs/messages.md)
 *   c=relaxed/relaxed. h= lists, in this order, those present among:
 *   From To Subject Date Message-ID MIME-Version Content-Type
 *   Content-Transfer-Encoding Reply-To List-Unsubscribe List-Unsubscribe-Post
 *   Feedback-ID — each as many times as it occurs — then From, To and
 *   Subject once more (over-signing: a From/To/Subject prepended later
 *   breaks the signature). t= is the caller's clock; no x= (expiry), no l=
 *   (a body length limit would let anyone append content).
 *   For ed25519-sha256 the signed data is SHA-256(canonical headers) and
 *   Ed25519 (pure) signs those 32 octets (RFC 8463 3).
 */
#include "templates/dkim.h"
#include "engine/mem.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define MAX_FIELDS 256
#define FOLD_AT 78

enum dkim_alg { ALG_RSA, ALG_ED25519 };

struct dkim_signer {
	enum dkim_alg alg;
	EVP_PKEY *key;
	EVP_MD *sha256;       /* fetched once: no per-call provider lookup */
	size_t sigmax;
	char *domain;
	char *selector;
};

static const char *const signed_names[] = {
	"from", "to", "subject", "date", "message-id", "mime-version",
	"content-type", "content-transfer-encoding", "reply-to",
	"list-unsubscribe", "list-unsubscribe-post", "feedback-id",
};
static const char *const oversigned[] = { "from", "to", "subject" };

static void
seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static const char *
ssl_reason(void)
{
	unsigned long e = ERR_get_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;
	ERR_clear_error();
	return r ? r : "unknown OpenSSL error";
}

static bool
name_ok(const char *s)
{
	size_t n;

	if (s == NULL || (n = strlen(s)) == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
			return false;
	}
	return true;
}

dkim_signer *
dkim_signer_new(const char *domain, const char *selector, const char *keyfile,
    char *err, size_t errlen)
{
	dkim_signer *s = NULL;
	EVP_PKEY *key = NULL;
	FILE *fp;

	if (!name_ok(domain)) {
		seterr(err, errlen, "dkim: domain '%s' is not a domain name",
		    domain ? domain : "");
		return NULL;
	}
	if (!name_ok(selector)) {
		seterr(err, errlen, "dkim: selector '%s' is not a DNS label",
		    selector ? selector : "");
		return NULL;
	}
	if (keyfile == NULL || (fp = fopen(keyfile, "r")) == NULL) {
		seterr(err, errlen, "dkim: %s: %s", keyfile ? keyfile : "(none)",
		    keyfile ? strerror(errno) : "no key file given");
		return NULL;
	}
	key = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
	fclose(fp);
	if (key == NULL) {
		ERR_clear_error();
		seterr(err, errlen, "dkim: %s: not a PEM private key (or it is "
		    "encrypted)", keyfile);
		return NULL;
	}
	s = mem_calloc(1, sizeof *s);
	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_RSA: {
		int bits = EVP_PKEY_get_bits(key);
		if (bits < 1024 || bits > 4096) {
			seterr(err, errlen, "dkim: %s: RSA key of %d bits; "
			    "1024 to 4096 supported", keyfile, bits);
			goto fail;
		}
		s->alg = ALG_RSA;
		break;
	}
	case EVP_PKEY_ED25519:
		s->alg = ALG_ED25519;
		break;
	default:
		seterr(err, errlen, "dkim: %s: key type %s; RSA or Ed25519 "
		    "required", keyfile, OBJ_nid2sn(EVP_PKEY_get_base_id(key)));
		goto fail;
	}
	s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (s->sha256 == NULL) {
		seterr(err, errlen, "dkim: SHA-256 unavailable: %s", ssl_reason());
		goto fail;
	}
	s->key = key;
	s->sigmax = (size_t)EVP_PKEY_get_size(key);
	s->domain = mem_strdup(domain);
	s->selector = mem_strdup(selector);
	return s;
fail:
	EVP_PKEY_free(key);
	free(s);
	return NULL;
}

void
dkim_signer_free(dkim_signer *s)
{
	if (s == NULL)
		return;
	EVP_PKEY_free(s->key);
	EVP_MD_free(s->sha256);
	free(s->domain);
	free(s->selector);
	free(s);
}

const char *
dkim_signer_algorithm(const dkim_signer *s)
{
	return s->alg == ALG_RSA ? "rsa-sha256" : "ed25519-sha256";
}

int
dkim_signer_dns_record(const dkim_signer *s, buf_t *out)
{
	unsigned char raw[32], *der = NULL;
	size_t rawlen = sizeof raw;
	int n;

	if (s->alg == ALG_ED25519) {
		if (EVP_PKEY_get_raw_public_key(s->key, raw, &rawlen) != 1)
			return -1;
		der = raw;
		n = (int)rawlen;
	} else if ((n = i2d_PUBKEY(s->key, &der)) <= 0) {
		return -1;
	}
	char *b = mem_alloc((size_t)n * 4 / 3 + 8);
	EVP_EncodeBlock((unsigned char *)b, der, n);
	buf_printf(out, "v=DKIM1; k=%s; p=%s",
	    s->alg == ALG_RSA ? "rsa" : "ed25519", b);
	free(b);
	if (der != raw)
		OPENSSL_free(der);
	return 0;
}

/* ---- canonicalization ---- */

/* Output goes either to a buffer or, through a small staging area, to a
 * digest: the body is hashed without being copied whole. */
typedef struct sink {
	buf_t *b;
	EVP_MD_CTX *md;
	size_t n;
	unsigned char stage[8192];
} sink;

static void
sink_flush(sink *k)
{
	if (k->n > 0 && k->md != NULL)
		EVP_DigestUpdate(k->md, k->stage, k->n);
	k->n = 0;
}

static void
sink_add(sink *k, const char *p, size_t n)
{
	if (k->b != NULL) {
		buf_add(k->b, p, n);
		return;
	}
	if (k->n + n > sizeof k->stage) {
		sink_flush(k);
		if (n > sizeof k->stage) {
			EVP_DigestUpdate(k->md, p, n);
			return;
		}
	}
	memcpy(k->stage + k->n, p, n);
	k->n += n;
}

/* RFC 6376 3.4.4: WSP runs -> one SP, no WSP at line end, no empty lines at
 * the end, CRLF added to a non-empty last line that lacks it. */
static void
canon_body(const char *s, size_t len, sink *k)
{
	size_t empty = 0, i = 0;

	while (i < len) {
		/* find the line end and whether the line is already canonical
		 * (no tab, no double space, no space at either end) with
		 * memchr, which scans many octets per step */
		size_t start = i, end;
		const char *eol = NULL, *p = s + i;
		while ((p = memchr(p, '\r', len - (size_t)(p - s))) != NULL) {
			if ((size_t)(p - s) + 1 < len && p[1] == '\n') {
				eol = p;
				break;
			}
			p++;
		}
		end = eol ? (size_t)(eol - s) : len;
		bool simple = s[i] != ' ' &&
		    memchr(s + start, '\t', end - start) == NULL;
		for (p = s + start; simple && (p = memchr(p, ' ',
		    end - (size_t)(p - s))) != NULL; p++)
			if ((size_t)(p - s) + 1 < end && p[1] == ' ')
				simple = false;
		if (end > start && s[end - 1] == ' ')
			simple = false;
		if (simple && end > start) {
			while (empty > 0) {
				sink_add(k, "\r\n", 2);
				empty--;
			}
			sink_add(k, s + start, end - start);
			sink_add(k, "\r\n", 2);
			i = eol ? end + 2 : len;
			continue;
		}
		bool wsp = false, any = false;
		for (size_t j = start; j < end; j++) {
			if (s[j] == ' ' || s[j] == '\t') {
				wsp = true;
				continue;
			}
			if (!any) {
				while (empty > 0) {
					sink_add(k, "\r\n", 2);
					empty--;
				}
				any = true;
			}
			/* copy the run of non-WSP octets in one go */
			size_t r = j;
			while (r < end && s[r] != ' ' && s[r] != '\t')
				r++;
			if (wsp)
				sink_add(k, " ", 1);
			wsp = false;
			sink_add(k, s + j, r - j);
			j = r - 1;
		}
		if (any)
			sink_add(k, "\r\n", 2);
		else
			empty++;
		i = eol ? end + 2 : len;
	}
}

void
dkim_canon_body(const char *body, size_t len, buf_t *out)
{
	sink k = { .b = out };
	canon_body(body, len, &k);
}

/* RFC 6376 3.4.2 for one field (name through its final CRLF, if any).
 * The result is never longer than the field + 3: written in place. */
static void
canon_header(const char *f, size_t len, buf_t *out)
{
	size_t i = 0, colon;
	bool wsp = false, any = false;

	buf_reserve(out, len + 3);
	char *w = out->p + out->len;
	while (i < len && f[i] != ':')
		i++;
	colon = i;
	while (colon > 0 && (f[colon - 1] == ' ' || f[colon - 1] == '\t'))
		colon--;
	for (size_t j = 0; j < colon; j++) {
		char c = f[j];
		*w++ = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
	}
	*w++ = ':';
	for (i++; i < len; i++) {
		char c = f[i];
		if (c == '\r' || c == '\n' || c == ' ' || c == '\t') {
			wsp = true;
			continue;
		}
		if (wsp && any)
			*w++ = ' ';
		wsp = false;
		any = true;
		*w++ = c;
	}
	*w++ = '\r';
	*w++ = '\n';
	out->len = (size_t)(w - out->p);
	*w = '\0';
}

void
dkim_canon_header(const char *field, size_t len, buf_t *out)
{
	canon_header(field, len, out);
}

/* ---- signing ---- */

typedef struct field {
	const char *p;
	size_t len;       /* through the CRLF that ends the field */
	size_t namelen;
	bool used;
} field;

static int
split_headers(const char *msg, size_t len, field *f, size_t *nf,
    size_t *body_off, char *err, size_t errlen)
{
	size_t i = 0, n = 0;

	while (i < len) {
		if (len - i >= 2 && msg[i] == '\r' && msg[i + 1] == '\n') {
			*nf = n;
			*body_off = i + 2;
			return 0;
		}
		if (msg[i] == ' ' || msg[i] == '\t') {
			seterr(err, errlen, "dkim: continuation line before "
			    "any header field");
			return -1;
		}
		if (n == MAX_FIELDS) {
			seterr(err, errlen, "dkim: more than %d header fields",
			    MAX_FIELDS);
			return -1;
		}
		size_t start = i;
		const char *colon = memchr(msg + i, ':', len - i);
		const char *eol;
		/* a field ends at the CRLF not followed by WSP */
		for (;;) {
			eol = memmem(msg + i, len - i, "\r\n", 2);
			if (eol == NULL) {
				seterr(err, errlen, "dkim: header block not "
				    "terminated by an empty line");
				return -1;
			}
			i = (size_t)(eol - msg) + 2;
			if (i >= len || (msg[i] != ' ' && msg[i] != '\t'))
				break;
		}
		if (colon == NULL || (size_t)(colon - msg) >= i) {
			seterr(err, errlen, "dkim: header line %zu has no ':'",
			    n + 1);
			return -1;
		}
		f[n].p = msg + start;
		f[n].len = i - start;
		f[n].namelen = (size_t)(colon - msg) - start;
		while (f[n].namelen > 0 && (f[n].p[f[n].namelen - 1] == ' ' ||
		    f[n].p[f[n].namelen - 1] == '\t'))
			f[n].namelen--;
		f[n].used = false;
		n++;
	}
	seterr(err, errlen, "dkim: no empty line between header and body");
	return -1;
}

static bool
field_is(const field *f, const char *name)
{
	return f->namelen == strlen(name) &&
	    strncasecmp(f->p, name, f->namelen) == 0;
}

/* Append the selected headers for `name`: last unused instance (bottom-up). */
static bool
take_last(field *f, size_t nf, const char *name, buf_t *canon)
{
	for (size_t i = nf; i-- > 0;) {
		if (!f[i].used && field_is(&f[i], name)) {
			f[i].used = true;
			canon_header(f[i].p, f[i].len, canon);
			return true;
		}
	}
	return false;
}

/* Tag writer for the DKIM-Signature header: tokens, folded at 78. */
static void
tag(buf_t *o, size_t *col, const char *t, size_t n, bool space)
{
	if (*col + (space ? 1 : 0) + n > FOLD_AT) {
		buf_add(o, "\r\n ", 3);
		*col = 1;
	} else if (space) {
		buf_addc(o, ' ');
		(*col)++;
	}
	buf_add(o, t, n);
	*col += n;
}

static void
tagf(buf_t *o, size_t *col, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
tagf(buf_t *o, size_t *col, const char *fmt, ...)
{
	char t[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(t, sizeof t, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof t)
		n = (int)sizeof t - 1;
	tag(o, col, t, (size_t)n, true);
}

static int
sign_one(const dkim_signer *s, field *f, size_t nf, const char *bh,
    time_t now, buf_t *canon, buf_t *out, char *err, size_t errlen)
{
	size_t hstart = out->len, col;
	EVP_MD_CTX *ctx = NULL;
	unsigned char sig[1024], hash[EVP_MAX_MD_SIZE];
	size_t siglen = sizeof sig;
	unsigned int hlen = 0;
	char sig64[1400];
	int ok = 0;

	for (size_t i = 0; i < nf; i++)
		f[i].used = false;
	buf_reset(canon);

	buf_adds(out, "DKIM-Signature:");
	col = 15;
	tagf(out, &col, "v=1; a=%s; c=relaxed/relaxed;", dkim_signer_algorithm(s));
	tagf(out, &col, "d=%s;", s->domain);
	tagf(out, &col, "s=%s;", s->selector);
	tagf(out, &col, "t=%lld;", (long long)now);
	/* h=: each listed name as often as present, then the over-signed */
	bool first = true;
	for (size_t k = 0; k < sizeof signed_names / sizeof signed_names[0]; k++) {
		while (take_last(f, nf, signed_names[k], canon)) {
			char t[40];
			int n = snprintf(t, sizeof t, "%s%s", first ? "h=" : ":",
			    signed_names[k]);
			tag(out, &col, t, (size_t)n, first);
			first = false;
		}
	}
	for (size_t k = 0; k < sizeof oversigned / sizeof oversigned[0]; k++) {
		char t[40];
		int n = snprintf(t, sizeof t, "%s%s", first ? "h=" : ":",
		    oversigned[k]);
		tag(out, &col, t, (size_t)n, first);
		first = false;
	}
	tag(out, &col, ";", 1, false);
	tagf(out, &col, "bh=%s;", bh);
	tag(out, &col, "b=", 2, true);
	/* the header itself, b= empty, without its CRLF (RFC 6376 3.7) */
	canon_header(out->p + hstart, out->len - hstart, canon);
	canon->len -= 2;

	ctx = EVP_MD_CTX_new();
	if (ctx == NULL)
		goto crypto;
	if (s->alg == ALG_RSA) {
		if (EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL,
		    s->key, NULL) != 1 ||
		    EVP_DigestSign(ctx, sig, &siglen,
		    (const unsigned char *)canon->p, canon->len) != 1)
			goto crypto;
	} else {
		if (EVP_Digest(canon->p, canon->len, hash, &hlen, s->sha256,
		    NULL) != 1 ||
		    EVP_DigestSignInit_ex(ctx, NULL, NULL, NULL, NULL, s->key,
		    NULL) != 1 ||
		    EVP_DigestSign(ctx, sig, &siglen, hash, hlen) != 1)
			goto crypto;
	}
	int n64 = EVP_EncodeBlock((unsigned char *)sig64, sig, (int)siglen);
	/* fold the signature: fill the current line, then 76 per line */
	size_t i = 0, left = (size_t)n64;
	while (left > 0) {
		size_t room = col < FOLD_AT ? FOLD_AT - col : 0;
		if (room == 0) {
			buf_add(out, "\r\n ", 3);
			col = 1;
			continue;
		}
		size_t k = left < room ? left : room;
		buf_add(out, sig64 + i, k);
		i += k;
		left -= k;
		col += k;
	}
	buf_add(out, "\r\n", 2);
	ok = 1;
	goto done;
crypto:
	seterr(err, errlen, "dkim: %s signing for d=%s s=%s failed: %s",
	    dkim_signer_algorithm(s), s->domain, s->selector, ssl_reason());
	buf_truncate(out, hstart);
done:
	EVP_MD_CTX_free(ctx);
	return ok ? 0 : -1;
}

int
dkim_sign(dkim_signer *const *signers, size_t n, const char *msg, size_t len,
    time_t now, buf_t *out, char *err, size_t errlen)
{
	field f[MAX_FIELDS];
	size_t nf = 0, body_off = 0, start = out->len;
	unsigned char bh[EVP_MAX_MD_SIZE];
	unsigned int bhlen = 0;
	char bh64[64];
	buf_t canon = BUF_INIT;
	EVP_MD_CTX *md = NULL;
	sink *k = NULL;
	int rc = -1;

	if (n == 0)
		return 0;
	if (split_headers(msg, len, f, &nf, &body_off, err, errlen) < 0)
		return -1;
	md = EVP_MD_CTX_new();
	k = mem_alloc(sizeof *k);
	k->b = NULL;
	k->md = md;
	k->n = 0;
	if (md == NULL || EVP_DigestInit_ex(md, signers[0]->sha256, NULL) != 1)
		goto crypto;
	canon_body(msg + body_off, len - body_off, k);
	sink_flush(k);
	if (EVP_DigestFinal_ex(md, bh, &bhlen) != 1)
		goto crypto;
	EVP_EncodeBlock((unsigned char *)bh64, bh, (int)bhlen);
	buf_reserve(&canon, 2048);
	for (size_t i = 0; i < n; i++) {
		if (sign_one(signers[i], f, nf, bh64, now, &canon, out, err,
		    errlen) < 0) {
			buf_truncate(out, start);
			goto done;
		}
	}
	rc = 0;
	goto done;
crypto:
	seterr(err, errlen, "dkim: body hash failed: %s", ssl_reason());
done:
	free(k);
	EVP_MD_CTX_free(md);
	buf_free(&canon);
	return rc;
}
