/*
 * control — the Unix control socket (prefix ctl_): one JSON object per line
 * each way (docs/protocol.md).
 *
 * The server reads requests with bounded memory (CTL_LINE_MAX per line; a
 * longer line gets an error reply and the connection is closed), parses
 * them with jansson and hands each to the owner's request callback, one at
 * a time per connection: the next line is not read until the owner has
 * replied, so replies come back in request order. A reply may be sent later
 * (a submission answers after its commit); ctl_conn_hold/release keep the
 * connection object alive meanwhile even if the client goes away, in which
 * case the reply is dropped.
 */
#ifndef CARTEIRO_CONTROL_H
#define CARTEIRO_CONTROL_H

#include <ev.h>
#include <jansson.h>
#include <stddef.h>

#define CTL_LINE_MAX (8u << 20)

typedef struct ctl ctl;
typedef struct ctl_conn ctl_conn;

struct ctl_ops {
	/* `req` is an object with a string "op"; the callee owns the
	 * reference and must eventually call ctl_reply or ctl_error. */
	void (*request)(void *arg, ctl_conn *c, const char *op, json_t *req);
};

ctl *ctl_new(struct ev_loop *loop, const char *path, const struct ctl_ops *ops,
	void *arg, char *err, size_t errlen);
/* Stop accepting connections (shutdown); open ones keep working. */
void ctl_stop_listening(ctl *c);
void ctl_free(ctl *c);

/* Sends {"ok":true, ...members of result} (result may be NULL); steals. */
void ctl_reply(ctl_conn *c, json_t *result);
/* Sends {"ok":false,"error":{"code","message","where"}}. */
void ctl_error(ctl_conn *c, const char *code, const char *message,
	const char *where);
/* Sends one line that is not the final reply (progress); steals. */
void ctl_send(ctl_conn *c, json_t *msg);
void ctl_conn_hold(ctl_conn *c);
void ctl_conn_release(ctl_conn *c);
/* The connection's peer went away (replies are dropped). */
int ctl_conn_closed(const ctl_conn *c);

/* ---- client side (blocking; used by the command line) ---- */
/* Connect, send `req`, read one reply line. Returns 0 and *reply, or -1. */
int ctl_call(const char *path, json_t *req, json_t **reply, char *err,
	size_t errlen);

#endif
