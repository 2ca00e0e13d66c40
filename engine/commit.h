/*
 * commit — the group committer (prefix cm_): the one thread that writes
 * delivery outcomes into the queue.
 *
 * The delivery loop never blocks on LMDB. It hands each outcome to
 * cm_push(); the committer thread collects outcomes for the configured
 * window (sync = group: e.g. 5 ms; full: no window, one transaction and
 * fsync per outcome), applies them in one write transaction (message
 * record, due index, body freed at the final outcome, counters,
 * suppression list), commits, then writes their event-log lines (so the log
 * never claims what the queue does not hold), and finally gives the batch
 * back to the loop thread (done callback via ev_async) which forgets the
 * messages it had in flight. Until then they stay in flight: a message is
 * never pulled twice while its outcome is being committed.
 *
 * Generic jobs (operator actions such as cancel or queue delete) run in
 * their own transaction on the same thread, so every queue write of the
 * engine after intake and rendering goes through here, in order.
 *
 * Ownership: outcomes and jobs pushed belong to the committer until they
 * come back through the done/after callbacks on the loop thread.
 */
#ifndef CARTEIRO_COMMIT_H
#define CARTEIRO_COMMIT_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/buf.h"
#include "engine/evlog.h"
#include "queue/queue.h"

struct cm_outcome {
	struct cm_outcome *next;   /* list link, owned by whoever holds it */
	uint64_t id;
	struct q_due due;          /* the index entry it was pulled with */
	uint8_t state;             /* final q_state, Q_QUEUED = deferred, or
	                            * Q_SENDING = claim a WhatsApp message */
	uint64_t new_due;          /* deferred: when to try again (ms) */
	uint16_t attempts;         /* attempts so far, this one included */
	uint64_t now_ms;
	bool suppress;             /* hard bounce: add rcpt to suppression */
	uint8_t category;          /* bounce category (recorded in the msg) */
	bool no_attempt;           /* a put-back: not counted as a deferral */
	bool claimed;              /* Q_SENDING claim accepted (set on commit) */
	bool committed;            /* set by the committer */
	char *rcpt;                /* owned; set with cm_outcome_text() */
	char *reply;               /* owned, at most Q_REPLY_MAX bytes */
	char *warm_site;           /* owned: count this attempt against the
	                            * site's warm-up cap of day warm_day */
	int32_t warm_day;
	buf_t event;               /* event-log line(s), written after commit */
	void *ref;                 /* the loop's own object */
};

/* Counters of a campaign touched by a batch, read inside its transaction. */
struct cm_touched {
	uint32_t cid;
	struct q_counters c;
};

struct cm_ops {
	/* Loop thread: a committed (or failed) batch comes back. */
	void (*done)(void *arg, struct cm_outcome *list,
		const struct cm_touched *t, size_t nt);
};

typedef struct cm cm;

/* A job: apply() runs on the committer thread inside a write transaction
 * (return 0 to commit, a negative error to abort); after() runs on the
 * loop thread with the result. Event lines appended to `events` are
 * written after a successful commit.
 *
 * A job over many messages works in chunks: apply() does a bounded part
 * and returns CM_MORE; that transaction is committed, committed() (if
 * set) is told so the job can move its position on, and apply() runs
 * again in a new transaction, after the outcomes that arrived meanwhile.
 * A chunk whose transaction is aborted (a full map: grown, then retried)
 * runs again from the same position, so apply() must take its position
 * from what committed() recorded. One huge transaction would hold its
 * dirty pages in memory (LMDB keeps those buffers for reuse: the
 * engine's memory would stay at its largest transaction's size). */
#define CM_MORE 1
struct cm_job {
	int (*apply)(q_txn *t, void *arg, buf_t *events, char *err,
		size_t errlen);
	void (*after)(void *arg, int rc, const char *err);
	void *arg;
	void (*committed)(void *arg);
};

cm *cm_new(q_env *q, evlog *ev, struct ev_loop *loop, uint64_t window_ms,
	const struct cm_ops *ops, void *arg, char *err, size_t errlen);
/* Loop thread. Takes ownership of o. */
void cm_push(cm *c, struct cm_outcome *o);
void cm_job(cm *c, const struct cm_job *j);
/* Commit what is pending, stop the thread, deliver the last callbacks. */
void cm_free(cm *c);

/* A new outcome (rcpt and reply empty strings). The struct is small:
 * with the commit lagging, the loop may hold a hundred thousand of them. */
struct cm_outcome *cm_outcome_new(void);
/* Copy rcpt and reply (either may be NULL = keep) into o. */
void cm_outcome_text(struct cm_outcome *o, const char *rcpt,
	const char *reply);
void cm_outcome_free(struct cm_outcome *o);

/* Outcomes committed since start (for the bench and status). */
uint64_t cm_committed(const cm *c);
uint64_t cm_transactions(const cm *c);

#endif
