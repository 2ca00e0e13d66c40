/*
 * unsub — one-click unsubscribe tokens (RFC 8058) and the List-Unsubscribe
 * header values that carry them.
 *
 * A token names (campaign id, message id) and carries an HMAC-SHA256, keyed
 * with the engine's secret, over those ids and the recipient address, so the
 * engine can later check that an unsubscribe request is genuine without
 * storing anything per message. Format (docs/unsubscribe.md): base64url,
 * no padding, of 33 octets = version 0x01 | campaign id (8, big-endian) |
 * message id (8, big-endian) | first 16 octets of the MAC -> 44 characters.
 * Stateless and thread-safe.
 */
#ifndef CARTEIRO_UNSUB_H
#define CARTEIRO_UNSUB_H

#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"

#define UNSUB_TOKEN_LEN 44       /* characters, without the NUL */
#define UNSUB_SECRET_MIN 16      /* octets */
#define UNSUB_POST_VALUE "List-Unsubscribe=One-Click"

/* Make the token for one recipient into `out` (NUL-terminated).
 * -1 if the secret is shorter than UNSUB_SECRET_MIN or rcpt is not an
 * address (empty, > 254 octets, no '@'). */
int unsub_token_make(const unsigned char *secret, size_t secret_len,
    uint64_t campaign_id, uint64_t message_id, const char *rcpt,
    char out[UNSUB_TOKEN_LEN + 1]);

/* Read the ids from a well-formed token WITHOUT checking the MAC: lets the
 * engine find the recipient to pass to unsub_token_verify(). 0 or -1. */
int unsub_token_peek(const char *token, uint64_t *campaign_id,
    uint64_t *message_id);

/* 0 if `token` was made with this secret for this recipient (MAC compared
 * in constant time), filling the ids; -1 otherwise (malformed, unknown
 * version, wrong recipient, tampered). The address's domain is compared
 * case-insensitively, the local part exactly. */
int unsub_token_verify(const unsigned char *secret, size_t secret_len,
    const char *token, const char *rcpt, uint64_t *campaign_id,
    uint64_t *message_id);

/*
 * Append the List-Unsubscribe value to `out`:
 *   "<URL?t=TOKEN>, <mailto:unsubscribe@DOMAIN?subject=TOKEN>"
 * (`&t=` when URL already has a query; the mailto part is left out when
 * mailto_domain is NULL). URL must be https:// and printable ASCII without
 * spaces, '<', '>', ',' or '"'. The List-Unsubscribe-Post value is
 * UNSUB_POST_VALUE. 0, or -1 with err set and `out` unchanged.
 */
int unsub_header_value(const char *url, const char *mailto_domain,
    const char *token, buf_t *out, char *err, size_t errlen);

#endif
