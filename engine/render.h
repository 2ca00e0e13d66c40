/*
 * render — the render pool (prefix rd_): worker threads that turn waiting
 * contacts into final messages in the queue.
 *
 * A worker claims a range of a campaign's contact indexes, reads those
 * contacts, renders each (Mustache subject/text/html → MIME → DKIM →
 * dot-stuffed wire form), and writes the whole batch in one transaction:
 * message records, bodies, due-index entries, counters, and deletes the
 * rendered contacts — so after a crash rendering resumes with exactly the
 * contacts that were not committed. Suppressed addresses are recorded as
 * `suppressed` without a body. Then the loop is told (ev_async) so the
 * scheduler looks at the campaign again.
 *
 * Flow control: a campaign never has more than `render_ahead` rendered but
 * unfinished messages, so the spool holds a bounded window of bodies.
 * Compiled campaigns (struct camp) are shared read-only by all workers.
 */
#ifndef CARTEIRO_RENDER_H
#define CARTEIRO_RENDER_H

#include <ev.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/buf.h"
#include "engine/campaign.h"
#include "engine/evlog.h"
#include "queue/queue.h"
#include "templates/dkim.h"

struct rd_env {
	const char *hostname;          /* Message-ID right-hand side */
	const char *bounce_domain;     /* VERP domain; NULL/"" = From domain */
	dkim_signer *const *signers;   /* may be empty */
	size_t nsigners;
	const unsigned char *unsub_key;   /* HMAC key for unsubscribe tokens */
	size_t unsub_keylen;
};

/* What rendering one contact produced, besides the bytes. */
struct rd_msg {
	char rcpt[Q_RCPT_MAX + 1];     /* envelope recipient, "" = none */
	char sender[Q_RCPT_MAX + 1];   /* envelope sender (VERP) */
	uint8_t flags;                 /* RD_8BIT, RD_SMTPUTF8 */
};
#define RD_8BIT     0x01
#define RD_SMTPUTF8 0x02

/*
 * Render contact `idx` of campaign `c` into `out` (appended: the stored
 * wire form, CRLF, dot-stuffed, without the final ".\r\n"). `now` is the
 * Date header. Returns 0, or -1 with err (the contact cannot be rendered).
 */
int rd_render(const struct camp *c, const struct rd_env *env, uint32_t idx,
	const json_t *contact, time_t now, buf_t *out, struct rd_msg *m,
	char *err, size_t errlen);
/*
 * The WhatsApp message of a contact as stored (JSON: to, template,
 * language, params rendered). Returns 0, or -1 with err saying why the
 * contact cannot get one (no usable phone number, parameter too long).
 */
int rd_render_wa(const struct camp *c, const json_t *contact, buf_t *out,
	char *to, size_t tolen, char *err, size_t errlen);
/* The envelope sender of a message (VERP: bounce+<msgid>@domain). */
void rd_sender(const struct camp *c, const struct rd_env *env, uint64_t id,
	char *out, size_t outlen);

typedef struct rd_pool rd_pool;

struct rd_ops {
	/* Loop thread: `n` messages of `cid` were committed; `done` when the
	 * campaign has no contacts left to render. */
	void (*rendered)(void *arg, uint32_t cid, unsigned n, bool done);
};

rd_pool *rd_new(q_env *q, evlog *ev, struct ev_loop *loop, unsigned threads,
	unsigned batch, uint64_t render_ahead, const struct rd_env *env,
	const struct rd_ops *ops, void *arg, char *err, size_t errlen);
/* Start rendering contacts [0, total) of c that are still waiting;
 * `rendered` and `final` are the campaign's counters now. */
void rd_add(rd_pool *p, struct camp *c, uint32_t total, uint64_t rendered,
	uint64_t final);
void rd_pause(rd_pool *p, uint32_t cid, bool paused);
/* Stop rendering cid; returns after any batch in progress is committed. */
void rd_remove(rd_pool *p, uint32_t cid);
/* The campaign's final count changed (frees render-ahead budget). */
void rd_final(rd_pool *p, uint32_t cid, uint64_t final);
/* Messages rendered per second over the pool's life (for status). */
uint64_t rd_rendered_total(rd_pool *p);
void rd_free(rd_pool *p);

#endif
