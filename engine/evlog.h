/*
 * evlog — the event log: one JSON object per line, one line per event
 * (delivered, deferred, bounced, expired, suppressed, cancelled, failed,
 * whatsapp_sent, whatsapp_failed, campaign events). Operators' scripts and
 * the tests read it; docs/operations.md lists the fields.
 *
 * Lines are formatted into a caller buffer (evlog_format) and written in
 * batches (evlog_write), so the committer writes a whole group commit's
 * events with one write(2) after the commit. Writing is thread-safe.
 */
#ifndef CARTEIRO_EVLOG_H
#define CARTEIRO_EVLOG_H

#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"

typedef struct evlog evlog;

struct evlog_event {
	const char *event;
	uint32_t campaign;
	uint64_t msg;            /* 0 = none */
	const char *rcpt;
	const char *site;
	const char *mx;
	int code;                /* 0 = none */
	const char *enhanced;
	const char *reply;       /* also "reason" for non-SMTP events */
	const char *category;    /* bounce category */
	const char *tls;         /* "TLSv1.3 TLS_AES_256_GCM_SHA384" */
	unsigned attempt;        /* 0 = none */
	double ms;               /* < 0 = none */
	const char *extra;       /* raw JSON members appended verbatim
	                          * ("\"k\":1,\"j\":\"v\""), trusted callers only */
};

/* Open for appending ("-" = stdout, "" = no event log). */
evlog *evlog_open(const char *path, char *err, size_t errlen);
void evlog_close(evlog *e);
/* Append one JSON line describing `ev` at time `ts` (epoch seconds). */
void evlog_format(buf_t *out, double ts, const struct evlog_event *ev);
/* Write complete lines; returns 0 or -1 (error logged once per burst). */
int evlog_write(evlog *e, const char *lines, size_t len);
/* Convenience: format and write one event now. */
int evlog_emit(evlog *e, const struct evlog_event *ev);

/* Append `s` as a JSON string literal (quotes included); invalid UTF-8 and
 * control characters are escaped, so the result is always valid JSON. */
void evlog_json_str(buf_t *out, const char *s);

#endif
