/*
 * smtp — one outbound SMTP session (prefix smtp_): a TCP connection to one
 * address, speaking ESMTP (RFC 5321) on the libev loop, sending the
 * messages its owner hands it and reporting each outcome. docs/smtp.md
 * draws the states.
 *
 * Contract with the owner (engine/delivery):
 *  - next() is asked for work whenever the session is ready for another
 *    message; it returns MSG (filling smtp_msg), WAIT (idle until
 *    smtp_kick) or QUIT.
 *  - every message handed out gets exactly one done(); a message is
 *    DELIVERED only on a 2xx reply to its final dot; a dropped connection,
 *    a timeout or an abort reports DEFERRED.
 *  - then exactly one ended(); after it the owner must not touch the
 *    session, which frees itself later from the loop.
 *  - the owner keeps smtp_msg strings and data alive until done().
 *  - callbacks may call smtp_kick()/smtp_close() on the session.
 */
#ifndef CARTEIRO_SMTP_H
#define CARTEIRO_SMTP_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "engine/tls.h"

enum smtp_tls_policy { SMTP_TLS_NONE, SMTP_TLS_OPPORTUNISTIC,
	SMTP_TLS_REQUIRED, SMTP_TLS_VERIFY };

struct smtp_timeouts {      /* seconds */
	double connect, greeting, ehlo, starttls, mail, rcpt, data_init,
		data_block, data_term, rset, quit, idle;
};

struct smtp_params {
	const struct sockaddr *addr;
	socklen_t addrlen;
	const struct sockaddr *source;   /* optional local address */
	socklen_t sourcelen;
	const char *mx_host;             /* SNI, verification, logs */
	const char *site;                /* TLS session resumption key */
	const char *helo_name;
	enum smtp_tls_policy tls;
	struct tls_client *tls_ctx;
	struct smtp_timeouts to;
	unsigned max_msgs;               /* per connection (0 = 100) */
	size_t max_reply;                /* reply text kept (0 = 4096) */
};

#define SMTP_MSG_8BIT     0x01
#define SMTP_MSG_SMTPUTF8 0x02

struct smtp_msg {
	uint64_t id;
	const char *sender;              /* "" = null sender <> */
	const char *rcpt;
	const char *data;                /* CRLF, dot-stuffed, ends with CRLF,
	                                  * without the final ".\r\n" */
	size_t len;
	unsigned flags;
};

enum smtp_next { SMTP_NEXT_MSG, SMTP_NEXT_WAIT, SMTP_NEXT_QUIT };

enum smtp_stage { SMTP_STAGE_CONNECT, SMTP_STAGE_GREETING, SMTP_STAGE_EHLO,
	SMTP_STAGE_STARTTLS, SMTP_STAGE_TLS, SMTP_STAGE_MAIL, SMTP_STAGE_RCPT,
	SMTP_STAGE_DATA, SMTP_STAGE_DOT, SMTP_STAGE_RSET, SMTP_STAGE_QUIT,
	SMTP_STAGE_LOCAL };

enum smtp_kind { SMTP_DELIVERED, SMTP_DEFERRED, SMTP_BOUNCED };

enum smtp_cat { SMTP_CAT_NONE, SMTP_CAT_BAD_MAILBOX, SMTP_CAT_MAILBOX_FULL,
	SMTP_CAT_TOO_LARGE, SMTP_CAT_POLICY_SPAM, SMTP_CAT_AUTH_DMARC,
	SMTP_CAT_OTHER };

struct smtp_result {
	enum smtp_kind kind;
	enum smtp_stage stage;
	int code;
	char enhanced[16];
	const char *reply;               /* printable, bounded */
	enum smtp_cat cat;
	const char *tls_version;         /* NULL when plaintext */
	const char *tls_cipher;
	double ms;
};

struct smtp_end {
	enum smtp_stage stage;
	int code;
	const char *reply;
	bool conn_failed;                /* never got a usable greeting */
	bool try_next_mx;                /* connect failure, 421/5xx greeting,
	                                  * TLS failure or TLS not offered */
	unsigned delivered;
};

struct smtp_session;

struct smtp_ops {
	enum smtp_next (*next)(void *owner, struct smtp_session *s,
		struct smtp_msg *out);
	void (*done)(void *owner, struct smtp_session *s,
		const struct smtp_msg *m, const struct smtp_result *r);
	void (*ended)(void *owner, struct smtp_session *s,
		const struct smtp_end *e);
};

/* NULL only when no socket can be created (err in errno). */
struct smtp_session *smtp_open(struct ev_loop *loop,
	const struct smtp_params *p, const struct smtp_ops *ops, void *owner,
	uint64_t id);
void smtp_kick(struct smtp_session *s);
void smtp_close(struct smtp_session *s);
const char *smtp_state_name(const struct smtp_session *s);

/* ---- pure pieces, exported for tests ---- */

/* Classify a reply: kind from the code, category from the enhanced code
 * and the text. */
enum smtp_kind smtp_classify(int code, const char *enhanced, const char *text,
	enum smtp_cat *cat);
const char *smtp_cat_name(enum smtp_cat c);
const char *smtp_stage_name(enum smtp_stage s);

/* Incremental reply parser with bounded memory. */
struct smtp_reply {
	int code;                        /* 0 until complete */
	char enhanced[16];
	char text[4096];                 /* lines joined with "\n", bounded */
	size_t len;
	/* parser state */
	char line[1024];
	size_t ll;
	bool overflow;                   /* current line longer than `line` */
	int cur;                         /* code of the multi-line so far */
	bool first;
	bool error;
	unsigned lines;
};
void smtp_reply_init(struct smtp_reply *r);
/* Feed bytes; returns the number consumed. Stops after one complete reply
 * (r->code != 0) or an error (r->error). */
size_t smtp_reply_feed(struct smtp_reply *r, const char *p, size_t n);

/* Envelope and data checks (defence against smuggling). */
bool smtp_envelope_ok(const char *addr);
bool smtp_data_ok(const char *p, size_t n);

/* EHLO keywords. */
#define SMTP_EXT_PIPELINING 0x01
#define SMTP_EXT_STARTTLS   0x02
#define SMTP_EXT_SIZE       0x04
#define SMTP_EXT_8BITMIME   0x08
#define SMTP_EXT_SMTPUTF8   0x10
#define SMTP_EXT_ENHANCED   0x20
unsigned smtp_parse_ehlo(const char *text, unsigned long long *size);

#endif
