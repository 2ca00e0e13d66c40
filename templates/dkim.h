/*
 * dkim — DKIM signing (RFC 6376), rsa-sha256 and ed25519-sha256 (RFC 8463),
 * relaxed/relaxed canonicalization, on OpenSSL 3.
 *
 * A dkim_signer holds one parsed private key with its domain and selector.
 * It is immutable after dkim_signer_new(): any number of render threads may
 * call dkim_sign() with the same signers at once (each call has its own
 * digest and signature contexts). Keys are parsed once, never per message.
 */
#ifndef CARTEIRO_DKIM_H
#define CARTEIRO_DKIM_H

#include <stddef.h>
#include <time.h>

#include "engine/buf.h"

typedef struct dkim_signer dkim_signer;

/*
 * Load a PEM private key (RSA 1024..4096 bits -> rsa-sha256, Ed25519 ->
 * ed25519-sha256). NULL on error, with `err` naming the file and the reason
 * (missing, not a private key, unsupported type, RSA too small/large) or the
 * bad domain/selector.
 */
dkim_signer *dkim_signer_new(const char *domain, const char *selector,
    const char *keyfile, char *err, size_t errlen);
void dkim_signer_free(dkim_signer *s);

/* The DNS TXT record to publish at SELECTOR._domainkey.DOMAIN:
 * "v=DKIM1; k=rsa|ed25519; p=BASE64" (appended to out). 0 or -1. */
int dkim_signer_dns_record(const dkim_signer *s, buf_t *out);

/* "rsa-sha256" or "ed25519-sha256". */
const char *dkim_signer_algorithm(const dkim_signer *s);

/*
 * Sign `msg` (a complete message with CRLF line ends, as mime_build() makes
 * it) with each of the `n` signers and append one folded DKIM-Signature
 * header per signer to `out` (CRLF-terminated), for the caller to write
 * before the message. The body hash is computed once for all signers.
 * Returns 0, or -1 with `err` set (no header/body separator, crypto failure);
 * on error `out` is left as it was.
 */
int dkim_sign(dkim_signer *const *signers, size_t n, const char *msg,
    size_t len, time_t now, buf_t *out, char *err, size_t errlen);

/* Exposed for tests: relaxed canonicalization of a body / one header field
 * ("Name: value\r\n continuation\r\n" -> "name:value\r\n"). */
void dkim_canon_body(const char *body, size_t len, buf_t *out);
void dkim_canon_header(const char *field, size_t len, buf_t *out);

#endif
