/*
 * unsub — one-click unsubscribe tokens (RFC 8058).
 *
 * Contract
 *   token = base64url(ver | campaign | message | MAC[0..16)), where
 *   MAC = HMAC-SHA256(secret, "carteiro-unsub\0" | ver | campaign | message
 *   | recipient-with-lowercased-domain). 128 MAC bits: forging one token
 *   needs ~2^128 tries. The ids are in clear (they are not secret; the MAC
 *   is what makes a token unforgeable). The version byte lets a later
 *   format (or a rotated secret) coexist. No state, no allocation.
 */
#include "templates/unsub.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define VERSION 0x01
#define RAW_LEN 33
#define MAC_LEN 16
#define MAX_RCPT 254

static const char b64u[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char label[] = "carteiro-unsub"; /* + its NUL */

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

static void
put64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (unsigned char)v;
		v >>= 8;
	}
}

static uint64_t
get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static int
compute_mac(const unsigned char *secret, size_t secret_len,
    const unsigned char *head, const char *rcpt, unsigned char mac[32])
{
	unsigned char in[sizeof label + 17 + MAX_RCPT];
	size_t n = 0, rl;
	const char *at;
	unsigned int maclen = 0;

	if (secret == NULL || secret_len < UNSUB_SECRET_MIN || rcpt == NULL ||
	    (rl = strlen(rcpt)) == 0 || rl > MAX_RCPT ||
	    (at = strrchr(rcpt, '@')) == NULL)
		return -1;
	memcpy(in, label, sizeof label);
	n = sizeof label;
	memcpy(in + n, head, 17);
	n += 17;
	for (size_t i = 0; i < rl; i++) {
		char c = rcpt[i];
		if (rcpt + i > at && c >= 'A' && c <= 'Z')
			c = (char)(c + 32);
		in[n++] = (unsigned char)c;
	}
	if (HMAC(EVP_sha256(), secret, (int)secret_len, in, n, mac,
	    &maclen) == NULL || maclen != 32)
		return -1;
	return 0;
}

static int
decode(const char *token, unsigned char raw[RAW_LEN])
{
	if (token == NULL || strlen(token) != UNSUB_TOKEN_LEN)
		return -1;
	for (size_t i = 0, o = 0; i < UNSUB_TOKEN_LEN; i += 4) {
		uint32_t v = 0;
		for (size_t k = 0; k < 4; k++) {
			const char *p = token[i + k] ? strchr(b64u, token[i + k]) : NULL;
			if (p == NULL)
				return -1;
			v = v << 6 | (uint32_t)(p - b64u);
		}
		raw[o++] = (unsigned char)(v >> 16);
		raw[o++] = (unsigned char)(v >> 8);
		raw[o++] = (unsigned char)v;
	}
	return raw[0] == VERSION ? 0 : -1;
}

int
unsub_token_make(const unsigned char *secret, size_t secret_len,
    uint64_t campaign_id, uint64_t message_id, const char *rcpt,
    char out[UNSUB_TOKEN_LEN + 1])
{
	unsigned char raw[RAW_LEN], mac[32];

	raw[0] = VERSION;
	put64(raw + 1, campaign_id);
	put64(raw + 9, message_id);
	if (compute_mac(secret, secret_len, raw, rcpt, mac) < 0)
		return -1;
	memcpy(raw + 17, mac, MAC_LEN);
	/* 33 octets = 11 groups of 3: base64url without padding */
	for (size_t i = 0, o = 0; i < RAW_LEN; i += 3) {
		uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 |
		    raw[i + 2];
		out[o++] = b64u[v >> 18];
		out[o++] = b64u[(v >> 12) & 63];
		out[o++] = b64u[(v >> 6) & 63];
		out[o++] = b64u[v & 63];
	}
	out[UNSUB_TOKEN_LEN] = '\0';
	OPENSSL_cleanse(mac, sizeof mac);
	return 0;
}

int
unsub_token_peek(const char *token, uint64_t *campaign_id,
    uint64_t *message_id)
{
	unsigned char raw[RAW_LEN];

	if (decode(token, raw) < 0)
		return -1;
	*campaign_id = get64(raw + 1);
	*message_id = get64(raw + 9);
	return 0;
}

int
unsub_token_verify(const unsigned char *secret, size_t secret_len,
    const char *token, const char *rcpt, uint64_t *campaign_id,
    uint64_t *message_id)
{
	unsigned char raw[RAW_LEN], mac[32];
	int ok;

	if (decode(token, raw) < 0 ||
	    compute_mac(secret, secret_len, raw, rcpt, mac) < 0)
		return -1;
	ok = CRYPTO_memcmp(mac, raw + 17, MAC_LEN) == 0;
	OPENSSL_cleanse(mac, sizeof mac);
	if (!ok)
		return -1;
	*campaign_id = get64(raw + 1);
	*message_id = get64(raw + 9);
	return 0;
}

static bool
url_ok(const char *u)
{
	size_t n;

	if (u == NULL || strncmp(u, "https://", 8) != 0 || (n = strlen(u)) <= 8 ||
	    n > 900)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)u[i];
		if (c <= 0x20 || c >= 0x7f || c == '<' || c == '>' || c == ',' ||
		    c == '"')
			return false;
	}
	return strchr(u, '#') == NULL;	/* the token must stay in the query */
}

static bool
domain_ok(const char *d)
{
	size_t n;

	if (d == NULL || (n = strlen(d)) == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = d[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '.' || c == '-'))
			return false;
	}
	return true;
}

int
unsub_header_value(const char *url, const char *mailto_domain,
    const char *token, buf_t *out, char *err, size_t errlen)
{
	unsigned char raw[RAW_LEN];

	if (!url_ok(url)) {
		seterr(err, errlen, "unsub: unsubscribe_url must be https:// "
		    "printable ASCII without spaces, <>,\" or #");
		return -1;
	}
	if (mailto_domain != NULL && !domain_ok(mailto_domain)) {
		seterr(err, errlen, "unsub: '%s' is not a domain name",
		    mailto_domain);
		return -1;
	}
	if (decode(token, raw) < 0) {
		seterr(err, errlen, "unsub: malformed token");
		return -1;
	}
	buf_printf(out, "<%s%st=%s>", url, strchr(url, '?') ? "&" : "?", token);
	if (mailto_domain != NULL)
		buf_printf(out, ", <mailto:unsubscribe@%s?subject=%s>",
		    mailto_domain, token);
	return 0;
}
