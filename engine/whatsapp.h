/*
 * whatsapp — WhatsApp Cloud API client on the libev loop (prefix wa_).
 *
 * Sends template messages: POST {api_url}/{phone_number_id}/messages with
 * "Authorization: Bearer TOKEN" and the Cloud API's JSON body (jansson
 * builds it, so contact data in params stays data). libcurl's multi
 * interface is driven by the caller's libev loop (one ev_io per curl socket,
 * one ev_timer), so nothing blocks; connections and easy handles are reused.
 *
 * Contract
 *   - TLS is always verified (peer and host). A plain http:// api_url is
 *     accepted only when its host is loopback (127.0.0.0/8, ::1, localhost):
 *     test doubles only. wa_new() refuses anything else with a clear error.
 *   - The token is never logged and never appears in an error or result
 *     message (server text that echoes it is masked).
 *   - Rate: a token bucket of cfg.rate messages/s (burst: a tenth of a
 *     second's worth, at least 1). Sends beyond it wait in the client's
 *     FIFO, bounded by cfg.max_queue; a full FIFO makes wa_send() return 0
 *     (back-pressure: the caller keeps the message and tries later).
 *     At most cfg.max_connections requests are in flight.
 *   - Every accepted send ends in exactly one callback, always from the loop
 *     (never from inside wa_send), unless wa_cancel() is called first; then
 *     the callback never runs. The callback may call wa_send and wa_cancel,
 *     never wa_free.
 *   - A 190 / HTTP 401 reply pauses the client: queued and new sends end
 *     with WA_CHANNEL_PAUSED without reaching the API (they are not failed;
 *     the engine keeps them) until wa_set_token() installs a new token.
 *   - A rate-limit reply (429 / 4 / 80007 / 130429) holds the whole FIFO for
 *     the suggested delay, so one limit does not become a burst of them.
 */
#ifndef CARTEIRO_WHATSAPP_H
#define CARTEIRO_WHATSAPP_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"

#define WA_PARAM_MAX 1024     /* characters (code points) per body parameter */
#define WA_PARAMS_MAX 64      /* parameters per message */
#define WA_MESSAGE_MAX 256    /* bytes of a result's sanitized message */

typedef struct wa_client wa_client;

struct wa_config {
	const char *api_url;          /* NULL/"" = https://graph.facebook.com/v21.0 */
	const char *phone_number_id;  /* digits */
	const char *token;            /* the access token itself (caller reads token_file) */
	const char *ca_file;          /* NULL/"" = system store */
	unsigned max_connections;     /* 0 = 16 */
	uint64_t timeout_ms;          /* whole request; 0 = 30 s */
	double rate;                  /* messages/s; 0 = unlimited */
	unsigned max_queue;           /* FIFO bound; 0 = 10000 */
	uint64_t ecosystem_retry_ms;  /* delay for 131049; 0 = 24 h */
	/* Clock in seconds for the rate limiter; NULL = ev_now(loop). */
	double (*now)(void *arg);
	void *now_arg;
};

struct wa_msg {
	const char *to;               /* E.164 digits, no '+' */
	const char *template_name;
	const char *language;         /* "pt_BR" */
	const char *const *params;    /* body parameters, UTF-8 */
	size_t nparams;
};

enum wa_kind {
	WA_SENT,            /* accepted by the API: message_id, wa_id */
	WA_RETRY,           /* throughput limit, 5xx, timeout, connection error */
	WA_RETRY_LATE,      /* 131049 ecosystem: retry after ecosystem_retry_ms */
	WA_FAILED,          /* this contact cannot be reached (or bad message) */
	WA_CHANNEL_PAUSED,  /* token expired/invalid: pause the channel */
};

struct wa_result {
	enum wa_kind kind;
	long http_status;         /* 0 = no HTTP reply (transport error) */
	long code;                /* Graph error.code, 0 if none */
	long subcode;             /* Graph error.error_subcode, 0 if none */
	const char *message;      /* sanitized, bounded; "" on success */
	const char *message_id;   /* messages[0].id (WA_SENT), else "" */
	const char *wa_id;        /* contacts[0].wa_id (WA_SENT), else "" */
	uint64_t retry_after_ms;  /* suggested delay (WA_RETRY*), else 0 */
	uint64_t ms;              /* request duration */
};

/* The result is valid only during the call. */
typedef void (*wa_cb)(void *arg, uint64_t id, const struct wa_result *r);

struct wa_stats {
	uint64_t requests;        /* HTTP requests completed (any outcome) */
	uint64_t sent, retried, failed, paused;
	uint64_t connects;        /* new connections (CURLINFO_NUM_CONNECTS) */
	size_t queued, in_flight;
};

wa_client *wa_new(struct ev_loop *loop, const struct wa_config *cfg,
	char *err, size_t errlen);
/* Drops everything pending without callbacks. Not from inside a wa_cb. */
void wa_free(wa_client *c);

/* Returns the send's id (> 0), or 0 when the FIFO is full. */
uint64_t wa_send(wa_client *c, const struct wa_msg *m, wa_cb cb, void *arg);
/* The callback of `id` will not run; returns 0, or -1 if unknown/done. */
int wa_cancel(wa_client *c, uint64_t id);
/* Install a new token and leave the paused state; -1 if it is malformed. */
int wa_set_token(wa_client *c, const char *token, char *err, size_t errlen);
int wa_paused(const wa_client *c);
void wa_get_stats(const wa_client *c, struct wa_stats *st);

/* ---- pure parts, exported for tests ----------------------------------- */

/*
 * The token bucket behind cfg.rate (until the engine has one shared with
 * SMTP throttles): `rate` tokens/s, at most `burst`, starting full.
 * wa_bucket_take() takes one token and returns 0, or returns the seconds
 * until one will be there (taking nothing). Time is the caller's clock.
 */
struct wa_bucket {
	double rate, burst, tokens, last;
};
void wa_bucket_init(struct wa_bucket *b, double rate, double burst, double now);
double wa_bucket_take(struct wa_bucket *b, double now);

/* Classify a reply by HTTP status and Graph error code/subcode. */
enum wa_kind wa_classify(long http_status, long code, long subcode);
const char *wa_kind_name(enum wa_kind k);
/* The default delay suggested for a retryable reply without Retry-After. */
uint64_t wa_default_delay_ms(long http_status, long code);

/* The JSON request body; -1 with a message naming the field on bad input. */
int wa_build_body(const struct wa_msg *m, buf_t *out, char *err, size_t errlen);
/* 0 if `url` may be used as api_url (https, or http on loopback). */
int wa_check_url(const char *url, char *err, size_t errlen);

/*
 * Parse a reply body (Graph success or error shape) into `r` (kind,
 * code, subcode, message, ids), using `scratch` for the strings. A 2xx
 * without messages[0].id is WA_FAILED: it may have been accepted, so a
 * retry could send it twice.
 */
void wa_parse_reply(long http_status, const char *body, size_t len,
	struct wa_result *r, char scratch[3][WA_MESSAGE_MAX]);

#endif
