/*
 * server — see server.h.
 *
 * Threads: this file runs on the loop thread, except intake_main(), which
 * runs one thread per submission (parsing a 1,000,000-line contact list
 * must not stall deliveries) and talks to the loop only through the
 * `intake_done` list and an ev_async.
 */
#include "engine/server.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "engine/addr.h"
#include "engine/campaign.h"
#include "engine/commit.h"
#include "engine/contacts.h"
#include "engine/control.h"
#include "engine/delivery.h"
#include "engine/evlog.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/render.h"
#include "queue/queue.h"
#include "templates/dkim.h"

#define INTAKE_CHUNK 5000
#define WARNINGS_MAX 20

struct scamp {
	uint32_t cid;
	struct camp *camp;
	char state[16];            /* ready, paused, cancelled, done */
	struct q_counters c;       /* as of the last commit seen */
	uint64_t accepted_ms;
	uint64_t done_ms;
	bool render_done;
	bool removing;             /* a cancel job is on its way */
};

struct intake;

struct srv {
	struct ev_loop *loop;
	struct cf *cf;
	q_env *q;
	evlog *ev;
	cm *cm;
	rd_pool *rd;
	dl *dl;
	ctl *ctl;
	struct rd_env env;         /* read by the render threads */
	char *hostname;            /* env's strings: ours, not the config's */
	char *bounce_domain;       /* (a reload frees the old configuration) */
	dkim_signer *signers[2];
	unsigned char unsub_key[32];
	uint64_t started_ms;

	struct scamp **camps;
	size_t ncamps;

	pthread_mutex_t mu;
	struct intake *intakes;    /* running (loop thread's list) */
	struct intake *intake_done;  /* finished (guarded by mu) */
	ev_async intake_wake;

	ev_signal sigterm, sigint, sighup;
	ev_timer stop_timer;
	bool stopping;
	int exit_status;
};

/* ---- helpers ---- */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static struct scamp *find_camp(struct srv *s, uint32_t cid)
{
	for (size_t i = 0; i < s->ncamps; i++)
		if (s->camps[i]->cid == cid)
			return s->camps[i];
	return NULL;
}

static struct scamp *add_camp(struct srv *s, struct camp *c,
	const char *state, uint64_t accepted_ms)
{
	struct scamp *sc = mem_calloc(1, sizeof *sc);
	sc->cid = c->cid;
	sc->camp = c;
	snprintf(sc->state, sizeof sc->state, "%s", state);
	sc->accepted_ms = accepted_ms;
	s->camps = mem_realloc(s->camps, (s->ncamps + 1) * sizeof *s->camps);
	s->camps[s->ncamps++] = sc;
	return sc;
}

/* The stored campaign record: {"def":…,"state":…,"accepted_ms":…}. */
static int put_record(q_txn *t, uint32_t cid, json_t *def, const char *state,
	uint64_t accepted_ms, uint64_t done_ms, char *err, size_t errlen)
{
	json_t *r = json_pack("{sOsssI}", "def", def, "state", state,
		"accepted_ms", (json_int_t)accepted_ms);
	if (done_ms)
		json_object_set_new(r, "done_ms", json_integer((json_int_t)done_ms));
	char *js = json_dumps(r, JSON_COMPACT);
	json_decref(r);
	int rc = q_campaign_put(t, cid, js, strlen(js), err, errlen);
	free(js);
	return rc;
}

/* Change the stored state of a campaign (inside a committer job). */
static int set_state(q_txn *t, uint32_t cid, const char *state,
	uint64_t done_ms, char *err, size_t errlen)
{
	const char *js;
	size_t len;
	if (q_campaign_get(t, cid, &js, &len) != 1) {
		snprintf(err, errlen, "campaign %u not found", cid);
		return -1;
	}
	json_t *r = json_loadb(js, len, 0, NULL);
	if (!r) {
		snprintf(err, errlen, "campaign %u: stored record unreadable", cid);
		return -1;
	}
	json_t *def = json_object_get(r, "def");
	uint64_t acc = (uint64_t)json_integer_value(json_object_get(r,
		"accepted_ms"));
	int rc = put_record(t, cid, def, state, acc, done_ms, err, errlen);
	json_decref(r);
	return rc;
}

/* ---- intake (own thread per submission) ---- */

struct intake {
	struct srv *s;
	ctl_conn *conn;
	json_t *req;               /* the "campaign" object */
	char *base_dir;
	pthread_t th;
	struct intake *next;       /* in s->intakes */
	struct intake *done_next;  /* in s->intake_done */
	_Atomic int cancel;

	/* state while reading */
	struct camp *camp;
	json_t *def;
	uint32_t cid;
	uint32_t idx;
	uint64_t skipped;
	json_t *warnings;
	char **pend;               /* serialized contacts not yet written */
	size_t *pendlen;
	size_t npend;
	const char *path;
	unsigned chunk;            /* [queue] job_chunk, for a purge */

	/* result */
	int rc;
	char code[32];
	char err[512];
	char where[512];
};

/* Remove a half-accepted campaign, `chunk` records per transaction (a
 * million contacts in one would leave the engine's memory at its dirty
 * pages' size: commit.h). The campaign record goes last. */
static int purge_campaign(q_env *q, uint32_t cid, unsigned chunk, char *err,
	size_t errlen)
{
	int more = 1, failures = 0;
	while (more == 1) {
		q_txn *t;
		int rc = q_begin(q, true, &t, err, errlen);
		if (rc == 0) {
			more = q_campaign_purge(t, cid, chunk, err, errlen);
			rc = more < 0 ? more : q_commit(t, err, errlen);
			if (more < 0)
				q_abort(t);
		}
		if (rc == Q_EFULL && q_grow(q, err, errlen) == 0)
			rc = 0, more = 1;
		if (rc != 0) {
			if (++failures == 3)
				return -1;
			more = 1;
		}
	}
	return 0;
}

static int intake_flush(struct intake *in, bool final)
{
	struct srv *s = in->s;
	for (int attempt = 0; attempt < 16; attempt++) {
		q_txn *t;
		int rc = q_begin(s->q, true, &t, in->err, sizeof in->err);
		uint32_t first = in->idx - (uint32_t)in->npend;
		for (size_t i = 0; rc == 0 && i < in->npend; i++)
			rc = q_contact_put(t, in->cid, first + (uint32_t)i,
				in->pend[i], in->pendlen[i], in->err, sizeof in->err);
		if (rc == 0) {
			struct q_counters d = { 0 };
			d.total = in->npend;
			rc = q_counters_add(t, in->cid, &d, in->err, sizeof in->err);
		}
		if (rc == 0 && final)
			rc = put_record(t, in->cid, in->def, "ready", now_ms(), 0,
				in->err, sizeof in->err);
		if (rc == 0) {
			rc = q_commit(t, in->err, sizeof in->err);
			t = NULL;
		}
		q_abort(t);
		if (rc == Q_EFULL) {
			if (q_grow(s->q, in->err, sizeof in->err) == 0)
				continue;
			snprintf(in->code, sizeof in->code, "spool_full");
			return -1;
		}
		if (rc != 0) {
			snprintf(in->code, sizeof in->code, "queue");
			return -1;
		}
		for (size_t i = 0; i < in->npend; i++)
			free(in->pend[i]);
		in->npend = 0;
		return 0;
	}
	snprintf(in->code, sizeof in->code, "spool_full");
	snprintf(in->err, sizeof in->err, "the spool is full");
	return -1;
}

static void warn(struct intake *in, const char *where, const char *msg)
{
	if (json_array_size(in->warnings) < WARNINGS_MAX)
		json_array_append_new(in->warnings, json_pack("{ssss}", "where",
			where, "message", msg));
}

/* Validate and normalise one contact, then queue it for writing. */
static int intake_contact(void *arg, json_t *c, unsigned long line)
{
	struct intake *in = arg;
	char where[600], aerr[256], norm[Q_RCPT_MAX + 1];
	if (in->cancel)
		return -2;
	json_t *email = json_object_get(c, "email");
	const char *e = json_string_value(email);
	int bad = 0;
	if (email && !json_is_string(email)) {
		snprintf(aerr, sizeof aerr, "\"email\" must be a string");
		bad = 1;
	} else if (!e || !*e) {
		if (in->camp->wa_mode == CAMP_WA_NONE) {
			snprintf(aerr, sizeof aerr, "no e-mail address");
			bad = 1;
		}
	} else if (addr_normalize(e, norm, sizeof norm, aerr,
	    sizeof aerr) < 0) {
		bad = 1;
	}
	if (bad) {
		snprintf(where, sizeof where, "%s:%lu: field email", in->path,
			line);
		if (in->camp->on_invalid == CAMP_INVALID_SKIP) {
			in->skipped++;
			warn(in, where, aerr);
			return 0;
		}
		snprintf(in->code, sizeof in->code, "invalid_contact");
		snprintf(in->err, sizeof in->err, "%s", aerr);
		snprintf(in->where, sizeof in->where, "%.500s", where);
		return -1;
	}
	if (e && *e)
		json_object_set_new(c, "email", json_string(norm));
	/* The WhatsApp number, in E.164; a bad one is kept as a reason so
	 * that the contact gets a clear event instead of a send. */
	json_t *phone = json_object_get(c, "phone");
	if (json_is_string(phone) && json_string_length(phone)) {
		char p164[32], perr[200];
		if (addr_phone_e164(json_string_value(phone), p164, sizeof p164,
		    perr, sizeof perr) == 0) {
			json_object_set_new(c, "phone", json_string(p164));
		} else {
			json_object_del(c, "phone");
			json_object_set_new(c, "_phone_error", json_string(perr));
		}
	}
	if (in->idx >= Q_WA_BIT - 1) {
		snprintf(in->code, sizeof in->code, "too_many_contacts");
		snprintf(in->err, sizeof in->err, "more than %u contacts",
			Q_WA_BIT - 2);
		return -1;
	}
	char *js = json_dumps(c, JSON_COMPACT);
	if (in->npend % INTAKE_CHUNK == 0) {
		in->pend = mem_realloc(in->pend, (in->npend + INTAKE_CHUNK) *
			sizeof *in->pend);
		in->pendlen = mem_realloc(in->pendlen, (in->npend + INTAKE_CHUNK) *
			sizeof *in->pendlen);
	}
	in->pend[in->npend] = js;
	in->pendlen[in->npend++] = strlen(js);
	in->idx++;
	if (in->npend == INTAKE_CHUNK && intake_flush(in, false) < 0) {
		snprintf(in->where, sizeof in->where, "%s:%lu", in->path, line);
		return -1;
	}
	return 0;
}

static void *intake_main(void *arg)
{
	struct intake *in = arg;
	struct srv *s = in->s;
	q_txn *t = NULL;
	in->rc = -1;
	in->warnings = json_array();
	snprintf(in->code, sizeof in->code, "invalid_campaign");

	if (camp_prepare(in->req, in->base_dir, &in->def, in->err,
	    sizeof in->err, in->where, sizeof in->where) < 0)
		goto out;
	if (!(in->camp = camp_compile(0, in->def, in->err, sizeof in->err,
	    in->where, sizeof in->where))) {
		snprintf(in->code, sizeof in->code, "template");
		goto out;
	}
	/* The campaign exists from here on, in state "accepting": a crash
	 * before the end leaves a record that start-up purges. */
	snprintf(in->code, sizeof in->code, "queue");
	if (q_begin(s->q, true, &t, in->err, sizeof in->err) ||
	    q_cid_next(t, &in->cid, in->err, sizeof in->err) ||
	    put_record(t, in->cid, in->def, "accepting", now_ms(), 0, in->err,
	    sizeof in->err))
		goto out;
	int rc = q_commit(t, in->err, sizeof in->err);
	t = NULL;
	if (rc)
		goto out;
	in->camp->cid = in->cid;
	in->path = camp_contacts_path(in->camp);
	rc = ct_read(in->path, json_string_value(json_object_get(in->def,
		"contacts_format")), intake_contact, in, in->err, sizeof in->err,
		in->where, sizeof in->where);
	if (rc == -2) {
		snprintf(in->code, sizeof in->code, "shutting_down");
		snprintf(in->err, sizeof in->err, "the engine is stopping");
	} else if (rc != 0 && strcmp(in->code, "queue") == 0) {
		snprintf(in->code, sizeof in->code, "contacts");
	}
	if (rc == 0 && in->idx == 0) {
		snprintf(in->code, sizeof in->code, "contacts");
		snprintf(in->err, sizeof in->err, "the contact list has no "
			"usable contact");
		snprintf(in->where, sizeof in->where, "%s", in->path);
		rc = -1;
	}
	if (rc == 0 && intake_flush(in, true) == 0)
		in->rc = 0;
out:
	q_abort(t);
	for (size_t i = 0; i < in->npend; i++)
		free(in->pend[i]);
	free(in->pend);
	free(in->pendlen);
	in->pend = NULL;
	in->npend = 0;
	if (in->rc != 0 && in->cid) {
		/* Nothing half-accepted stays behind (if this fails, the
		 * campaign stays "accepting" and the next start purges it). */
		char e2[256];
		if (purge_campaign(s->q, in->cid, in->chunk, e2, sizeof e2))
			log_err("intake: purging campaign %u: %s", in->cid, e2);
	}
	pthread_mutex_lock(&s->mu);
	in->done_next = s->intake_done;
	s->intake_done = in;
	pthread_mutex_unlock(&s->mu);
	ev_async_send(s->loop, &s->intake_wake);
	return NULL;
}

static void intake_free(struct intake *in)
{
	json_decref(in->req);
	json_decref(in->def);
	json_decref(in->warnings);
	if (in->camp)
		camp_unref(in->camp);
	if (in->conn)
		ctl_conn_release(in->conn);
	free(in->base_dir);
	free(in);
}

static void start_campaign(struct srv *s, struct scamp *sc);

static void intake_finished(struct srv *s, struct intake *in)
{
	pthread_join(in->th, NULL);
	for (struct intake **p = &s->intakes; *p; p = &(*p)->next)
		if (*p == in) {
			*p = in->next;
			break;
		}
	if (in->rc == 0) {
		struct scamp *sc = add_camp(s, camp_ref(in->camp), "ready",
			now_ms());
		sc->c.total = in->idx;
		log_info("campaign %u \"%s\" accepted: %u contacts, %" PRIu64
			" skipped", in->cid, in->camp->name, in->idx, in->skipped);
		struct evlog_event ev = { .event = "campaign_accepted",
			.campaign = in->cid, .ms = -1 };
		evlog_emit(s->ev, &ev);
		start_campaign(s, sc);
		if (!ctl_conn_closed(in->conn))
			ctl_reply(in->conn, json_pack("{sIsssIsIsO}", "id",
				(json_int_t)in->cid, "name", in->camp->name,
				"contacts", (json_int_t)in->idx, "skipped",
				(json_int_t)in->skipped, "warnings", in->warnings));
	} else {
		log_warn("submission refused: %s%s%s", in->where,
			*in->where ? ": " : "", in->err);
		if (!ctl_conn_closed(in->conn))
			ctl_error(in->conn, in->code, in->err, in->where);
	}
	intake_free(in);
}

static void intake_wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct srv *s = w->data;
	(void)loop;
	(void)revents;
	pthread_mutex_lock(&s->mu);
	struct intake *list = s->intake_done;
	s->intake_done = NULL;
	pthread_mutex_unlock(&s->mu);
	while (list) {
		struct intake *n = list->done_next;
		intake_finished(s, list);
		list = n;
	}
}

/* ---- campaigns on the loop ---- */

static void start_campaign(struct srv *s, struct scamp *sc)
{
	bool paused = strcmp(sc->state, "paused") == 0;
	rd_add(s->rd, sc->camp, (uint32_t)sc->c.total, sc->c.rendered,
		q_counters_final(&sc->c));
	if (paused)
		rd_pause(s->rd, sc->cid, true);
	dl_campaign(s->dl, sc->camp, paused);
}

/* Jobs over a whole campaign or queue (cancel, queue retry/delete,
 * forgetting a finished campaign's delivered records) work in chunks of
 * `[queue] job_chunk` messages per transaction: a million-message job is
 * a hundred transactions, not one whose dirty pages would all sit in
 * memory (commit.h). The size is copied into the job when it is made: the
 * committer thread never reads the configuration. */
struct state_job {
	struct srv *s;
	uint32_t cid;
	char state[16];
	uint64_t done_ms;
	ctl_conn *conn;            /* reply when done, may be NULL */
	uint64_t n;                /* messages affected (committed chunks) */
	uint64_t chunk_n;          /* … in the chunk being applied */
	uint64_t pos, pos_next;    /* done: message id to go on from */
	int phase, phase_next;     /* cancel: 0 waiting messages, 1 standby */
	unsigned chunk;            /* [queue] job_chunk */
};

static void state_committed(void *arg)
{
	struct state_job *j = arg;
	j->pos = j->pos_next;
	j->phase = j->phase_next;
	j->n += j->chunk_n;
	j->chunk_n = 0;
}

static int state_apply(q_txn *t, void *arg, buf_t *events, char *err,
	size_t errlen)
{
	struct state_job *j = arg;
	(void)events;
	bool done = strcmp(j->state, "done") == 0;
	j->chunk_n = 0;
	if (done) {
		/* A finished campaign keeps the records of what did not arrive
		 * (bounce report, queue show) and forgets the delivered ones
		 * and the WhatsApp messages left on standby (their e-mail
		 * arrived), so campaign after campaign does not grow the
		 * spool. In
		 * chunks; the state is recorded with the last one (a restart
		 * before it finds the campaign ready with nothing left to send,
		 * and finishes it again). */
		j->pos_next = j->pos;
		int more = q_msg_forget(t, j->cid, Q_FORGET_DELIVERED |
			Q_FORGET_STANDBY, &j->pos_next, j->chunk, &j->chunk_n, err,
			errlen);
		if (more < 0)
			return more;     /* Q_EFULL included: grown, retried */
		if (more)
			return CM_MORE;
	}
	int rc = set_state(t, j->cid, j->state, j->done_ms, err, errlen);
	/* No message of a finished campaign will be sent again: its bodies'
	 * compression dictionary goes too. */
	if (rc == 0 && (done || strcmp(j->state, "cancelled") == 0))
		rc = q_dict_del(t, j->cid, err, errlen);
	return rc;
}

static void state_after(void *arg, int rc, const char *err)
{
	struct state_job *j = arg;
	if (rc)
		log_err("campaign %u: recording state %s: %s", j->cid, j->state,
			err);
	if (j->conn) {
		if (rc)
			ctl_error(j->conn, "queue", err, NULL);
		else
			ctl_reply(j->conn, json_pack("{sIsssI}", "id",
				(json_int_t)j->cid, "state", j->state, "messages",
				(json_int_t)j->n));
		ctl_conn_release(j->conn);
	}
	free(j);
}

static void check_done(struct srv *s, struct scamp *sc)
{
	if (strcmp(sc->state, "ready") != 0 || !q_counters_done(&sc->c))
		return;
	snprintf(sc->state, sizeof sc->state, "done");
	sc->done_ms = now_ms();
	log_info("campaign %u finished: %" PRIu64 " delivered, %" PRIu64
		" bounced, %" PRIu64 " expired, %" PRIu64 " suppressed",
		sc->cid, sc->c.delivered, sc->c.bounced, sc->c.expired,
		sc->c.suppressed);
	struct state_job *j = mem_calloc(1, sizeof *j);
	j->chunk = s->cf->job_chunk;
	j->s = s;
	j->cid = sc->cid;
	snprintf(j->state, sizeof j->state, "done");
	j->done_ms = sc->done_ms;
	struct cm_job job = { state_apply, state_after, j, state_committed };
	cm_job(s->cm, &job);
	struct evlog_event ev = { .event = "campaign_done", .campaign = sc->cid,
		.ms = (double)(sc->done_ms - sc->accepted_ms) };
	evlog_emit(s->ev, &ev);
}

static void on_committed(void *arg, struct cm_outcome *list,
	const struct cm_touched *t, size_t nt)
{
	struct srv *s = arg;
	dl_committed(s->dl, list);
	for (size_t i = 0; i < nt; i++) {
		struct scamp *sc = find_camp(s, t[i].cid);
		if (!sc)
			continue;
		sc->c = t[i].c;
		rd_final(s->rd, sc->cid, q_counters_final(&sc->c));
		check_done(s, sc);
	}
}

static void on_rendered(void *arg, uint32_t cid, unsigned n, bool done)
{
	struct srv *s = arg;
	struct scamp *sc = find_camp(s, cid);
	if (!sc)
		return;
	sc->c.rendered += n;
	if (done)
		sc->render_done = true;
	dl_kick(s->dl, cid);
	/* Everything may have been suppressed: nothing for delivery to do. */
	if (n) {
		q_txn *t;
		char err[128];
		if (q_begin(s->q, false, &t, err, sizeof err) == 0) {
			q_counters_get(t, cid, &sc->c);
			q_abort(t);
		}
		check_done(s, sc);
	}
}

/* ---- control operations ---- */

static int64_t req_id(json_t *req, const char *k)
{
	json_t *v = json_object_get(req, k);
	if (json_is_integer(v))
		return json_integer_value(v);
	if (json_is_string(v)) {
		char *end;
		long long x = strtoll(json_string_value(v), &end, 10);
		if (*end == 0 && x > 0)
			return x;
	}
	return -1;
}

static void op_submit(struct srv *s, ctl_conn *c, json_t *req)
{
	json_t *camp = json_object_get(req, "campaign");
	const char *base = json_string_value(json_object_get(req, "base_dir"));
	if (!json_is_object(camp)) {
		ctl_error(c, "bad_request", "submit needs a \"campaign\" object",
			"campaign");
		return;
	}
	if (s->stopping) {
		ctl_error(c, "shutting_down", "the engine is stopping", NULL);
		return;
	}
	if (json_object_get(camp, "whatsapp") && (!s->cf->wa_phone_number_id ||
	    !*s->cf->wa_phone_number_id)) {
		ctl_error(c, "invalid_campaign", "the campaign uses WhatsApp but "
			"this engine has no [whatsapp] phone_number_id configured",
			"whatsapp");
		return;
	}
	struct intake *in = mem_calloc(1, sizeof *in);
	in->chunk = s->cf->job_chunk;
	in->s = s;
	in->conn = c;
	ctl_conn_hold(c);
	in->req = json_incref(camp);
	in->base_dir = mem_strdup(base ? base : "");
	if (pthread_create(&in->th, NULL, intake_main, in) != 0) {
		ctl_error(c, "internal", "cannot start the intake thread", NULL);
		intake_free(in);
		return;
	}
	in->next = s->intakes;
	s->intakes = in;
}

static json_t *camp_json(struct srv *s, struct scamp *sc, q_txn *t)
{
	if (t)
		q_counters_get(t, sc->cid, &sc->c);
	const struct q_counters *c = &sc->c;
	uint64_t fin = q_counters_final(c);
	uint64_t end = sc->done_ms ? sc->done_ms : now_ms();
	double secs = end > sc->accepted_ms ? (end - sc->accepted_ms) / 1000.0
		: 0;
	json_t *j = json_pack("{sIsssssssIsIsIsIsIsIsIsIsIsIsIsf}",
		"id", (json_int_t)sc->cid, "name", sc->camp->name,
		"state", sc->state,
		"priority", sc->camp->priority == CAMP_TRANSACTIONAL
			? "transactional" : "bulk",
		"total", (json_int_t)c->total,
		"rendered", (json_int_t)c->rendered,
		"delivered", (json_int_t)c->delivered,
		"bounced", (json_int_t)c->bounced,
		"expired", (json_int_t)c->expired,
		"suppressed", (json_int_t)c->suppressed,
		"failed", (json_int_t)c->failed,
		"cancelled", (json_int_t)c->cancelled,
		"deferrals", (json_int_t)c->deferrals,
		"finished", (json_int_t)fin,
		"pending", (json_int_t)(c->total > fin ? c->total - fin : 0),
		"elapsed", secs);
	json_object_set_new(j, "rate", json_real(secs > 0 ?
		c->delivered / secs : 0));
	json_object_set_new(j, "skipped", json_integer((json_int_t)c->skipped));
	if (sc->camp->wa_mode != CAMP_WA_NONE)
		json_object_set_new(j, "whatsapp", json_pack("{sssIsIsI}", "mode",
			sc->camp->wa_mode == CAMP_WA_BOTH ? "both"
			: sc->camp->wa_mode == CAMP_WA_ONLY ? "only" : "fallback",
			"created", (json_int_t)c->wa_created,
			"sent", (json_int_t)c->wa_sent,
			"failed", (json_int_t)c->wa_failed));
	(void)s;
	return j;
}

/* Bounce report of a campaign: counts by category and the most frequent
 * replies, from the message records. */
struct bounce_ctx {
	json_t *cats;
	json_t *replies;   /* reply → count */
};

static int bounce_cb(void *arg, uint64_t id, const struct q_msg *m)
{
	struct bounce_ctx *x = arg;
	(void)id;
	if (m->state != Q_BOUNCED)
		return 0;
	const char *cat = dl_category_name((m->flags & Q_CAT_MASK) >>
		Q_CAT_SHIFT);
	json_t *n = json_object_get(x->cats, cat);
	json_object_set_new(x->cats, cat, json_integer(n ?
		json_integer_value(n) + 1 : 1));
	if (json_object_size(x->replies) < 1000 || json_object_get(x->replies,
	    m->reply)) {
		json_t *r = json_object_get(x->replies, m->reply);
		json_object_set_new(x->replies, m->reply, json_integer(r ?
			json_integer_value(r) + 1 : 1));
	}
	return 0;
}

static json_t *bounce_report(q_txn *t, uint32_t cid)
{
	char err[128];
	struct bounce_ctx x = { json_object(), json_object() };
	q_msg_each(t, cid, bounce_cb, &x, err, sizeof err);
	/* the ten most frequent replies */
	json_t *top = json_array();
	for (int k = 0; k < 10; k++) {
		const char *best = NULL;
		json_int_t bn = 0;
		const char *key;
		json_t *v;
		json_object_foreach(x.replies, key, v)
			if (json_integer_value(v) > bn) {
				bn = json_integer_value(v);
				best = key;
			}
		if (!best)
			break;
		json_array_append_new(top, json_pack("{sssI}", "reply", best,
			"count", bn));
		json_object_del(x.replies, best);
	}
	json_decref(x.replies);
	return json_pack("{soso}", "categories", x.cats, "top_replies", top);
}

static void op_status(struct srv *s, ctl_conn *c, json_t *req)
{
	int64_t id = req_id(req, "id");
	q_txn *t;
	char err[256];
	if (q_begin(s->q, false, &t, err, sizeof err)) {
		ctl_error(c, "queue", err, NULL);
		return;
	}
	json_t *arr = json_array();
	bool bounces = json_is_true(json_object_get(req, "bounces"));
	for (size_t i = 0; i < s->ncamps; i++)
		if (id < 0 || s->camps[i]->cid == (uint32_t)id) {
			json_t *cj = camp_json(s, s->camps[i], t);
			if (bounces)
				json_object_set_new(cj, "bounce_report",
					bounce_report(t, s->camps[i]->cid));
			json_array_append_new(arr, cj);
		}
	q_abort(t);
	if (id >= 0 && json_array_size(arr) == 0) {
		json_decref(arr);
		ctl_error(c, "not_found", "no such campaign", "id");
		return;
	}
	struct q_stat st;
	json_t *r = json_pack("{soso}", "campaigns", arr, "engine",
		dl_status(s->dl, json_is_true(json_object_get(req, "sites"))));
	if (q_stat(s->q, &st, err, sizeof err) == 0)
		json_object_set_new(json_object_get(r, "engine"), "spool_bytes",
			json_integer((json_int_t)st.used_bytes));
	json_object_set_new(json_object_get(r, "engine"), "uptime",
		json_real((now_ms() - s->started_ms) / 1000.0));
	ctl_reply(c, r);
}

/* cancel: every waiting message and contact of the campaign is cancelled,
 * job_chunk of them per transaction, then its WhatsApp messages on standby
 * are forgotten and its dictionary deleted. The state is recorded with
 * the first chunk: a restart in the middle finds the campaign cancelled
 * with messages, contacts or its dictionary left and finishes the job
 * (recover()). */
struct cancel_ctx {
	struct q_due *due;
	size_t n, cap;
	uint32_t *idx;
	size_t nidx;
};

static int collect_due(void *arg, const struct q_due *d)
{
	struct cancel_ctx *x = arg;
	if (x->n == x->cap) {
		x->cap = x->cap ? x->cap * 2 : 1024;
		x->due = mem_realloc(x->due, x->cap * sizeof *x->due);
	}
	x->due[x->n++] = *d;
	return 0;
}

static int collect_contact(void *arg, uint32_t idx, const void *p, size_t len)
{
	struct cancel_ctx *x = arg;
	(void)p;
	(void)len;
	x->idx[x->nidx++] = idx;
	return 0;
}

static int cancel_finish(q_txn *t, struct state_job *j, buf_t *events,
	char *err, size_t errlen)
{
	int rc = q_dict_del(t, j->cid, err, errlen);
	if (rc == 0) {
		struct evlog_event ev = { .event = "campaign_cancelled",
			.campaign = j->cid, .ms = -1 };
		char extra[64];
		snprintf(extra, sizeof extra, "\"messages\":%" PRIu64, j->n);
		ev.extra = extra;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		evlog_format(events, (double)ts.tv_sec + ts.tv_nsec / 1e9, &ev);
	}
	return rc;
}

static int cancel_apply(q_txn *t, void *arg, buf_t *events, char *err,
	size_t errlen)
{
	struct state_job *j = arg;
	struct cancel_ctx x = { 0 };
	uint64_t n = 0, wa_cancelled = 0;
	j->chunk_n = 0;
	j->phase_next = j->phase;
	j->pos_next = j->pos;
	if (j->phase == 1) {
		/* Last: the WhatsApp messages on standby, never needed now. */
		uint64_t gone;
		int more = q_msg_forget(t, j->cid, Q_FORGET_STANDBY, &j->pos_next,
			j->chunk, &gone, err, errlen);
		if (more < 0)
			return more;
		if (more)
			return CM_MORE;
		return cancel_finish(t, j, events, err, errlen);
	}
	int rc = set_state(t, j->cid, "cancelled", 0, err, errlen);
	if (rc == 0)
		rc = q_due_scan(t, j->cid, NULL, UINT64_MAX, j->chunk,
			collect_due, &x, NULL, err, errlen);
	if (rc > 0)
		rc = 0;
	for (size_t i = 0; rc == 0 && i < x.n; i++) {
		uint64_t id = q_id(x.due[i].cid, x.due[i].idx);
		struct q_msg m;
		rc = q_due_del(t, &x.due[i], err, errlen);
		if (rc == 0 && q_msg_get(t, id, &m) == 1 &&
		    (m.state == Q_QUEUED || m.state == Q_PAUSED)) {
			m.state = Q_CANCELLED;
			snprintf(m.reply, sizeof m.reply, "cancelled by operator");
			rc = q_msg_put(t, id, &m, err, errlen);
			if (rc == 0)
				rc = q_body_del(t, id, err, errlen);
			if (x.due[i].idx & Q_WA_BIT)
				wa_cancelled++;
			else
				n++;
		}
	}
	/* Contacts never rendered are cancelled too. */
	size_t room = j->chunk - x.n;
	if (rc == 0 && room) {
		x.idx = mem_alloc(room * sizeof *x.idx);
		rc = q_contact_scan(t, j->cid, 0, (unsigned)room, collect_contact,
			&x, err, errlen);
		if (rc > 0)
			rc = 0;
		for (size_t i = 0; rc == 0 && i < x.nidx; i++)
			rc = q_contact_del(t, j->cid, x.idx[i], err, errlen);
	}
	bool more = x.n + x.nidx == j->chunk;
	free(x.due);
	free(x.idx);
	if (rc == 0) {
		struct q_counters d = { 0 };
		d.cancelled = n + x.nidx;
		d.wa_failed = wa_cancelled;
		rc = q_counters_add(t, j->cid, &d, err, errlen);
	}
	j->chunk_n = n + x.nidx;
	if (rc == 0 && !more)
		j->phase_next = 1;   /* then the standby ones */
	return rc < 0 ? rc : CM_MORE;
}

static void op_campaign_state(struct srv *s, ctl_conn *c, json_t *req,
	const char *op)
{
	int64_t id = req_id(req, "id");
	struct scamp *sc = id > 0 ? find_camp(s, (uint32_t)id) : NULL;
	if (!sc) {
		ctl_error(c, "not_found", "no such campaign", "id");
		return;
	}
	bool cancel = strcmp(op, "cancel") == 0;
	bool pause = strcmp(op, "pause") == 0;
	if (strcmp(sc->state, "done") == 0 || strcmp(sc->state,
	    "cancelled") == 0 || sc->removing) {
		ctl_error(c, "finished", "the campaign is already finished", "id");
		return;
	}
	struct state_job *j = mem_calloc(1, sizeof *j);
	j->chunk = s->cf->job_chunk;
	j->s = s;
	j->cid = sc->cid;
	j->conn = c;
	ctl_conn_hold(c);
	struct cm_job job = { state_apply, state_after, j, state_committed };
	if (cancel) {
		sc->removing = true;
		/* Stop rendering first so no new message appears after. */
		rd_remove(s->rd, sc->cid);
		dl_forget(s->dl, sc->cid);
		snprintf(sc->state, sizeof sc->state, "cancelled");
		snprintf(j->state, sizeof j->state, "cancelled");
		job.apply = cancel_apply;
	} else {
		snprintf(sc->state, sizeof sc->state, "%s",
			pause ? "paused" : "ready");
		snprintf(j->state, sizeof j->state, "%s", sc->state);
		rd_pause(s->rd, sc->cid, pause);
		dl_pause(s->dl, sc->cid, pause);
		struct evlog_event ev = { .event = pause ? "campaign_paused"
			: "campaign_resumed", .campaign = sc->cid, .ms = -1 };
		evlog_emit(s->ev, &ev);
	}
	cm_job(s->cm, &job);
}

/* suppress add|remove|list */
struct supp_job {
	char addr[Q_RCPT_MAX + 1];
	bool add;
	char reason[256];
	ctl_conn *conn;
	int found;
};

static int supp_apply(q_txn *t, void *arg, buf_t *events, char *err,
	size_t errlen)
{
	struct supp_job *j = arg;
	(void)events;
	const char *js;
	size_t len;
	j->found = q_suppress_get(t, j->addr, &js, &len) == 1;
	if (!j->add)
		return q_suppress_del(t, j->addr, err, errlen);
	buf_t b = BUF_INIT;
	buf_adds(&b, "{\"reason\":");
	evlog_json_str(&b, j->reason);
	buf_printf(&b, ",\"ts\":%llu}", (unsigned long long)(now_ms() / 1000));
	int rc = q_suppress_put(t, j->addr, buf_cstr(&b), err, errlen);
	buf_free(&b);
	return rc;
}

static void supp_after(void *arg, int rc, const char *err)
{
	struct supp_job *j = arg;
	if (rc)
		ctl_error(j->conn, "queue", err, NULL);
	else
		ctl_reply(j->conn, json_pack("{sssb}", "address", j->addr,
			"was_listed", j->found));
	ctl_conn_release(j->conn);
	free(j);
}

static int supp_list_cb(void *arg, const char *addr, const char *json,
	size_t len)
{
	json_t *o = json_loadb(json, len, 0, NULL);
	if (!o)
		o = json_object();
	json_object_set_new(o, "address", json_string(addr));
	json_array_append_new(arg, o);
	return json_array_size(arg) >= 100000;
}

static void op_suppress(struct srv *s, ctl_conn *c, json_t *req)
{
	const char *action = json_string_value(json_object_get(req, "action"));
	const char *addr = json_string_value(json_object_get(req, "address"));
	char err[256];
	if (action && strcmp(action, "list") == 0) {
		q_txn *t;
		if (q_begin(s->q, false, &t, err, sizeof err)) {
			ctl_error(c, "queue", err, NULL);
			return;
		}
		json_t *arr = json_array();
		q_suppress_each(t, supp_list_cb, arr, err, sizeof err);
		q_abort(t);
		ctl_reply(c, json_pack("{so}", "suppressed", arr));
		return;
	}
	if (!action || (strcmp(action, "add") && strcmp(action, "remove"))) {
		ctl_error(c, "bad_request", "suppress action is add, remove or "
			"list", "action");
		return;
	}
	struct supp_job *j = mem_calloc(1, sizeof *j);
	if (!addr || addr_normalize(addr, j->addr, sizeof j->addr, err,
	    sizeof err) < 0) {
		free(j);
		ctl_error(c, "bad_request", addr ? err : "an address is needed",
			"address");
		return;
	}
	j->add = action[0] == 'a';
	const char *reason = json_string_value(json_object_get(req, "reason"));
	snprintf(j->reason, sizeof j->reason, "%s", reason ? reason
		: "added by operator");
	j->conn = c;
	ctl_conn_hold(c);
	struct cm_job job = { supp_apply, supp_after, j, NULL };
	cm_job(s->cm, &job);
}

/* queue list|show|retry|delete */
struct qfilter {
	int64_t cid;               /* -1 = any */
	char domain[256];          /* "" = any */
	int state;                 /* -1 = any */
	uint64_t msg;              /* 0 = any */
};

static bool qmatch(const struct qfilter *f, uint64_t id,
	const struct q_msg *m)
{
	if (f->msg && f->msg != id)
		return false;
	if (f->cid >= 0 && q_id_cid(id) != (uint32_t)f->cid)
		return false;
	if (f->state >= 0 && m->state != f->state)
		return false;
	if (f->domain[0]) {
		const char *at = strrchr(m->rcpt, '@');
		if (!at || strcasecmp(at + 1, f->domain) != 0)
			return false;
	}
	return true;
}

static int parse_filter(json_t *req, struct qfilter *f, char *err,
	size_t errlen)
{
	memset(f, 0, sizeof *f);
	f->cid = json_object_get(req, "campaign") ? req_id(req, "campaign")
		: -1;
	f->state = -1;
	const char *d = json_string_value(json_object_get(req, "domain"));
	const char *st = json_string_value(json_object_get(req, "state"));
	const char *msg = json_string_value(json_object_get(req, "msg"));
	if (json_object_get(req, "campaign") && f->cid < 0) {
		snprintf(err, errlen, "campaign must be a campaign id");
		return -1;
	}
	if (d)
		snprintf(f->domain, sizeof f->domain, "%s", d);
	if (st && (f->state = q_state_parse(st)) < 0) {
		snprintf(err, errlen, "unknown state \"%s\"", st);
		return -1;
	}
	if (msg) {
		char *end;
		f->msg = strtoull(msg, &end, 16);
		if (*end || !f->msg) {
			snprintf(err, errlen, "msg is a message id (16 hex digits)");
			return -1;
		}
	}
	return 0;
}

static json_t *msg_json(uint64_t id, const struct q_msg *m)
{
	char ids[20];
	snprintf(ids, sizeof ids, "%016" PRIx64, id);
	return json_pack("{sssIsssssIsIsIsI}", "msg", ids, "campaign",
		(json_int_t)q_id_cid(id), "rcpt", m->rcpt, "state",
		q_state_name(m->state), "attempts", (json_int_t)m->attempts,
		"due_ms", (json_int_t)m->due_ms, "last_ms", (json_int_t)m->last_ms,
		"size", (json_int_t)m->body_len);
}

struct list_ctx {
	struct qfilter f;
	json_t *arr;
	size_t limit;
	size_t matched;
};

static int list_cb(void *arg, uint64_t id, const struct q_msg *m)
{
	struct list_ctx *x = arg;
	if (!qmatch(&x->f, id, m))
		return 0;
	x->matched++;
	if (json_array_size(x->arr) < x->limit) {
		json_t *o = msg_json(id, m);
		if (m->reply[0])
			json_object_set_new(o, "reply", json_string(m->reply));
		json_array_append_new(x->arr, o);
	}
	return 0;
}

/* queue retry|delete, job_chunk due entries per transaction: the job
 * walks the campaigns in id order and each one's due index from where the
 * last committed chunk stopped. */
struct qjob {
	struct srv *s;
	struct qfilter f;
	bool delete;
	ctl_conn *conn;
	uint64_t n;                /* messages changed (committed chunks) */
	uint64_t now;              /* retry: the new due time, fixed */
	uint32_t at_cid;           /* committed position */
	bool has_from;
	struct q_due from;
	uint32_t next_cid;         /* the chunk being applied */
	bool next_has_from, more;
	struct q_due next_from;
	uint64_t chunk_n;
	unsigned chunk;            /* [queue] job_chunk */
};

struct qjob_scan {
	q_txn *t;
	struct qjob *j;
	int rc;
	char *err;
	size_t errlen;
	struct q_due *due;
	size_t ndue;
};

static int qjob_collect(void *arg, const struct q_due *d)
{
	struct qjob_scan *x = arg;
	x->due[x->ndue++] = *d;
	return 0;
}

static int qjob_campaign_each(void *arg, uint32_t cid, const char *js,
	size_t len)
{
	struct qjob_scan *x = arg;
	struct qjob *j = x->j;
	(void)js;
	(void)len;
	if ((j->f.cid >= 0 && cid != (uint32_t)j->f.cid) || cid < j->at_cid)
		return 0;
	const struct q_due *from = cid == j->at_cid && j->has_from ? &j->from
		: NULL;
	x->rc = q_due_scan(x->t, cid, from, UINT64_MAX,
		(unsigned)(j->chunk - x->ndue), qjob_collect, x, NULL, x->err,
		x->errlen);
	if (x->rc < 0)
		return 1;
	if (x->ndue == j->chunk) {
		/* This chunk is full: the next one goes on after its last. */
		j->more = true;
		j->next_cid = cid;
		j->next_has_from = true;
		j->next_from = x->due[x->ndue - 1];
		return 1;
	}
	return 0;
}

static void qjob_committed(void *arg)
{
	struct qjob *j = arg;
	j->at_cid = j->next_cid;
	j->has_from = j->next_has_from;
	j->from = j->next_from;
	j->n += j->chunk_n;
	j->chunk_n = 0;
}

/* retry: matching queued messages become due now; delete: cancelled. */
static int qjob_apply(q_txn *t, void *arg, buf_t *events, char *err,
	size_t errlen)
{
	struct qjob *j = arg;
	struct qjob_scan x = { .t = t, .j = j, .err = err, .errlen = errlen };
	x.due = mem_alloc(j->chunk * sizeof *x.due);
	j->more = false;
	j->chunk_n = 0;
	int rc = 0;
	struct q_msg one;
	if (j->f.msg) {
		/* One message: its due entry is where its record says. */
		if (q_msg_get(t, j->f.msg, &one) == 1)
			x.due[x.ndue++] = (struct q_due){ q_id_cid(j->f.msg),
				one.due_ms, q_id_idx(j->f.msg),
				(q_id_idx(j->f.msg) & Q_WA_BIT) ? 1 : 0 };
	} else {
		rc = q_campaign_each(t, qjob_campaign_each, &x, err, errlen);
		if (rc == 0 && x.rc < 0)
			rc = x.rc;
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	double tsd = (double)ts.tv_sec + ts.tv_nsec / 1e9;
	for (size_t i = 0; rc == 0 && i < x.ndue; i++) {
		struct q_due *d = &x.due[i];
		uint64_t id = q_id(d->cid, d->idx);
		struct q_msg m;
		/* (retry: an entry already moved by this job comes round again
		 * when its new time is after where the walk is) */
		if ((!j->delete && d->due_ms == j->now) ||
		    q_msg_get(t, id, &m) != 1 || !qmatch(&j->f, id, &m) ||
		    m.state != Q_QUEUED)
			continue;
		if ((rc = q_due_del(t, d, err, errlen)) != 0)
			break;
		if (j->delete) {
			m.state = Q_CANCELLED;
			snprintf(m.reply, sizeof m.reply, "deleted by operator");
			rc = q_body_del(t, id, err, errlen);
			struct q_counters c = { 0 };
			if (d->idx & Q_WA_BIT)
				c.wa_failed = 1;
			else
				c.cancelled = 1;
			if (rc == 0)
				rc = q_counters_add(t, d->cid, &c, err, errlen);
			struct evlog_event ev = { .event = "deleted",
				.campaign = d->cid, .msg = id, .rcpt = m.rcpt,
				.reply = "deleted by operator", .ms = -1 };
			evlog_format(events, tsd, &ev);
		} else {
			struct q_due nd = *d;
			nd.due_ms = j->now;
			m.due_ms = j->now;
			rc = q_due_put(t, &nd, err, errlen);
		}
		if (rc == 0)
			rc = q_msg_put(t, id, &m, err, errlen);
		j->chunk_n++;
	}
	free(x.due);
	return rc < 0 ? rc : rc ? -1 : j->more ? CM_MORE : 0;
}

static void qjob_after(void *arg, int rc, const char *err)
{
	struct qjob *j = arg;
	if (rc) {
		ctl_error(j->conn, "queue", err, NULL);
	} else {
		/* Cursors restart so the scheduler sees re-keyed entries. */
		dl_kick(j->s->dl, 0);
		ctl_reply(j->conn, json_pack("{sI}", "messages", (json_int_t)j->n));
	}
	ctl_conn_release(j->conn);
	free(j);
}

static void op_queue(struct srv *s, ctl_conn *c, json_t *req)
{
	const char *action = json_string_value(json_object_get(req, "action"));
	char err[256];
	struct qfilter f;
	if (!action) {
		ctl_error(c, "bad_request", "queue needs an action: list, show, "
			"retry or delete", "action");
		return;
	}
	if (parse_filter(req, &f, err, sizeof err) < 0) {
		ctl_error(c, "bad_request", err, NULL);
		return;
	}
	if (strcmp(action, "list") == 0 || strcmp(action, "show") == 0) {
		bool show = action[0] == 's';
		if (show && !f.msg) {
			ctl_error(c, "bad_request", "queue show needs a message id",
				"msg");
			return;
		}
		q_txn *t;
		if (q_begin(s->q, false, &t, err, sizeof err)) {
			ctl_error(c, "queue", err, NULL);
			return;
		}
		if (show) {
			struct q_msg m;
			if (q_msg_get(t, f.msg, &m) != 1) {
				q_abort(t);
				ctl_error(c, "not_found", "no such message", "msg");
				return;
			}
			json_t *o = msg_json(f.msg, &m);
			json_object_set_new(o, "reply", json_string(m.reply));
			/* A rare operator action: its own zstd context. */
			q_zctx *z = q_zctx_new();
			buf_t body = BUF_INIT;
			int brc = q_body_read(t, z, f.msg, &body, err, sizeof err);
			if (brc == 1) {
				const char *b = body.p;
				const char *end = memmem(b, body.len, "\r\n\r\n", 4);
				size_t hl = end ? (size_t)(end - b) + 2 : body.len;
				json_t *h = json_stringn(b, hl);
				json_object_set_new(o, "headers", h ? h
					: json_string("(not UTF-8)"));
			} else if (brc < 0) {
				json_object_set_new(o, "headers", json_string(err));
			}
			buf_free(&body);
			q_zctx_free(z);
			q_abort(t);
			ctl_reply(c, o);
			return;
		}
		int64_t limit = req_id(req, "limit");
		struct list_ctx x = { f, json_array(), limit > 0 ? (size_t)limit
			: 1000, 0 };
		q_msg_each(t, f.cid > 0 ? (uint32_t)f.cid : 0, list_cb, &x, err,
			sizeof err);
		q_abort(t);
		ctl_reply(c, json_pack("{sosI}", "messages", x.arr, "matched",
			(json_int_t)x.matched));
		return;
	}
	if (strcmp(action, "retry") && strcmp(action, "delete")) {
		ctl_error(c, "bad_request", "queue action is list, show, retry or "
			"delete", "action");
		return;
	}
	if (action[0] == 'd' && f.cid < 0 && !f.msg && !f.domain[0]) {
		ctl_error(c, "bad_request", "queue delete needs a message, a "
			"campaign or a domain", NULL);
		return;
	}
	struct qjob *j = mem_calloc(1, sizeof *j);
	j->s = s;
	j->f = f;
	j->delete = action[0] == 'd';
	j->conn = c;
	j->now = now_ms();
	j->chunk = s->cf->job_chunk;
	ctl_conn_hold(c);
	struct cm_job job = { qjob_apply, qjob_after, j, qjob_committed };
	cm_job(s->cm, &job);
}

static void begin_stop(struct srv *s);

/* The host name: the configured one, else the machine's. */
static void default_hostname(struct cf *cf)
{
	if (!cf->hostname || !*cf->hostname) {
		char h[256] = "localhost";
		gethostname(h, sizeof h - 1);
		free(cf->hostname);
		cf->hostname = mem_strdup(h);
	}
}

static bool str_changed(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") != 0;
}

/*
 * `config reload` and SIGHUP: the file again (with the command line's -o
 * overrides), all or nothing. New limits apply to sites and new sessions
 * at once (dl_reconfigure); what the process was built with at start —
 * spool, socket, event log, threads, sync mode, host name, VERP domain,
 * DKIM keys — is kept, with a warning when the file changed it.
 */
static int reload(struct srv *s, char *err, size_t errlen)
{
	struct cf *n = mem_calloc(1, sizeof *n);
	if (cf_reload(s->cf, n, err, errlen) < 0) {
		log_err("reload refused, old settings kept: %s", err);
		cf_free(n);
		free(n);
		return -1;
	}
	default_hostname(n);
	const struct cf *o = s->cf;
	struct { const char *key, *was, *now; } fixed[] = {
		{ "[engine] spool", o->spool, n->spool },
		{ "[engine] socket", o->socket, n->socket },
		{ "[engine] event_log", o->event_log, n->event_log },
		{ "[engine] hostname", o->hostname, n->hostname },
		{ "[engine] bounce_domain", o->bounce_domain, n->bounce_domain },
		{ "[dkim] domain", o->dkim_domain, n->dkim_domain },
		{ "[dkim] selector", o->dkim_selector, n->dkim_selector },
		{ "[dkim] key", o->dkim_key, n->dkim_key },
		{ "[dkim] selector2", o->dkim_selector2, n->dkim_selector2 },
		{ "[dkim] key2", o->dkim_key2, n->dkim_key2 },
	};
	for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
		if (str_changed(fixed[i].was, fixed[i].now))
			log_warn("reload: %s changes apply after a restart",
				fixed[i].key);
	if (o->sync != n->sync || o->render_threads != n->render_threads ||
	    o->map_size != n->map_size || o->group_window_ms !=
	    n->group_window_ms)
		log_warn("reload: [queue] sync, map_size, group_window and "
			"[engine] render_threads changes apply after a restart");
	dl_reconfigure(s->dl, n);
	cf_free(s->cf);
	free(s->cf);
	s->cf = n;
	log_info("configuration reloaded from %s", n->file);
	return 0;
}

static void op_config(struct srv *s, ctl_conn *c, json_t *req)
{
	const char *action = json_string_value(json_object_get(req, "action"));
	if (action && strcmp(action, "show") == 0) {
		buf_t b = BUF_INIT;
		cf_show(s->cf, &b);
		ctl_reply(c, json_pack("{ss}", "config", buf_cstr(&b)));
		buf_free(&b);
		return;
	}
	if (action && strcmp(action, "reload") == 0) {
		char err[512];
		if (!s->cf->file) {
			ctl_error(c, "no_file", "the engine runs on embedded defaults "
				"(no -c FILE): nothing to reload", NULL);
			return;
		}
		if (reload(s, err, sizeof err) < 0) {
			ctl_error(c, "config", err, NULL);
			return;
		}
		ctl_reply(c, json_pack("{ss}", "reloaded", s->cf->file));
		return;
	}
	ctl_error(c, "bad_request", "config action is show or reload", "action");
}

static void on_request(void *arg, ctl_conn *c, const char *op, json_t *req)
{
	struct srv *s = arg;
	if (strcmp(op, "submit") == 0)
		op_submit(s, c, req);
	else if (strcmp(op, "status") == 0)
		op_status(s, c, req);
	else if (strcmp(op, "pause") == 0 || strcmp(op, "resume") == 0 ||
	    strcmp(op, "cancel") == 0)
		op_campaign_state(s, c, req, op);
	else if (strcmp(op, "suppress") == 0)
		op_suppress(s, c, req);
	else if (strcmp(op, "queue") == 0)
		op_queue(s, c, req);
	else if (strcmp(op, "config") == 0)
		op_config(s, c, req);
	else if (strcmp(op, "ping") == 0)
		ctl_reply(c, json_pack("{ss}", "version", "0.1.0"));
	else if (strcmp(op, "stop") == 0) {
		ctl_reply(c, NULL);
		begin_stop(s);
	} else {
		char msg[128];
		snprintf(msg, sizeof msg, "unknown op \"%.60s\"", op);
		ctl_error(c, "bad_request", msg, "op");
	}
	json_decref(req);
}

/* ---- start-up and shutdown ---- */

struct load_ctx {
	struct srv *s;
	uint32_t purge[64];
	size_t npurge;
	q_txn *t;
};

static int load_cb(void *arg, uint32_t cid, const char *js, size_t len)
{
	struct load_ctx *x = arg;
	struct srv *s = x->s;
	json_t *r = json_loadb(js, len, 0, NULL);
	const char *state = json_string_value(json_object_get(r, "state"));
	char err[512], where[256];
	if (!r || !state || strcmp(state, "accepting") == 0) {
		if (x->npurge < 64)
			x->purge[x->npurge++] = cid;
		json_decref(r);
		return 0;
	}
	struct camp *c = camp_compile(cid, json_object_get(r, "def"), err,
		sizeof err, where, sizeof where);
	if (!c) {
		log_err("campaign %u: stored definition does not compile (%s: "
			"%s); left as is", cid, where, err);
		json_decref(r);
		return 0;
	}
	struct scamp *sc = add_camp(s, c, state, (uint64_t)json_integer_value(
		json_object_get(r, "accepted_ms")));
	sc->done_ms = (uint64_t)json_integer_value(json_object_get(r,
		"done_ms"));
	q_counters_get(x->t, cid, &sc->c);
	json_decref(r);
	return 0;
}

static int stop_at_first(void *arg, const struct q_due *d)
{
	(void)d;
	*(bool *)arg = true;
	return 1;
}

static int contact_first(void *arg, uint32_t idx, const void *p, size_t len)
{
	(void)idx;
	(void)p;
	(void)len;
	*(bool *)arg = true;
	return 1;
}

/* A cancelled campaign with messages in the due index, contacts or its
 * dictionary left: the engine stopped between two chunks of its
 * cancellation. */
static bool cancel_unfinished(struct srv *s, uint32_t cid)
{
	q_txn *t;
	char err[256];
	bool left = false;
	int rc = q_begin(s->q, false, &t, err, sizeof err);
	if (rc == 0) {
		rc = q_due_scan(t, cid, NULL, UINT64_MAX, 1, stop_at_first, &left,
			NULL, err, sizeof err);
		if (rc >= 0 && !left)
			rc = q_contact_scan(t, cid, 0, 1, contact_first, &left, err,
				sizeof err);
		/* The dictionary goes with the job's last step. */
		const void *dp;
		size_t dlen;
		if (rc >= 0 && !left)
			left = q_dict_get(t, cid, &dp, &dlen) == 1;
		q_abort(t);
	}
	if (rc < 0)
		log_err("campaign %u: checking its cancellation: %s", cid, err);
	return left;
}

static int recover(struct srv *s, char *err, size_t errlen)
{
	struct load_ctx x = { .s = s };
	uint64_t swept;
	if (q_sweep(s->q, &swept, err, errlen))
		return -1;
	if (swept)
		log_info("freed %" PRIu64 " bodies of messages finished before "
			"the last stop", swept);
	if (q_begin(s->q, false, &x.t, err, errlen))
		return -1;
	int rc = q_campaign_each(x.t, load_cb, &x, err, errlen);
	q_abort(x.t);
	if (rc)
		return -1;
	for (size_t i = 0; i < x.npurge; i++) {
		log_info("campaign %u was being accepted when the engine stopped: "
			"removed (the submitter got no \"ok\")", x.purge[i]);
		if (purge_campaign(s->q, x.purge[i], s->cf->job_chunk, err,
		    errlen))
			return -1;
	}
	for (size_t i = 0; i < s->ncamps; i++) {
		struct scamp *sc = s->camps[i];
		if (strcmp(sc->state, "cancelled") == 0 &&
		    cancel_unfinished(s, sc->cid)) {
			/* Stopped in the middle of its cancellation: finish it. */
			log_info("campaign %u: finishing its cancellation", sc->cid);
			sc->removing = true;
			struct state_job *j = mem_calloc(1, sizeof *j);
			j->chunk = s->cf->job_chunk;
			j->s = s;
			j->cid = sc->cid;
			snprintf(j->state, sizeof j->state, "cancelled");
			struct cm_job job = { cancel_apply, state_after, j,
				state_committed };
			cm_job(s->cm, &job);
			continue;
		}
		if (strcmp(sc->state, "ready") && strcmp(sc->state, "paused"))
			continue;
		log_info("campaign %u \"%s\": resuming, %" PRIu64 " of %" PRIu64
			" finished", sc->cid, sc->camp->name,
			q_counters_final(&sc->c), sc->c.total);
		start_campaign(s, sc);
		check_done(s, sc);
	}
	return 0;
}

static void stop_poll(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct srv *s = w->data;
	(void)revents;
	if (s->intakes == NULL && dl_idle(s->dl)) {
		ev_timer_stop(loop, w);
		ev_break(loop, EVBREAK_ALL);
	}
}

static void begin_stop(struct srv *s)
{
	if (s->stopping)
		return;
	s->stopping = true;
	log_info("stopping: finishing the messages in flight");
	ctl_stop_listening(s->ctl);
	for (struct intake *in = s->intakes; in; in = in->next)
		in->cancel = 1;
	dl_drain(s->dl);
	ev_timer_init(&s->stop_timer, stop_poll, 0.05, 0.05);
	s->stop_timer.data = s;
	ev_timer_start(s->loop, &s->stop_timer);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct srv *s = w->data;
	(void)loop;
	(void)revents;
	if (w->signum == SIGHUP) {
		if (!s->cf->file) {
			log_warn("SIGHUP: no configuration file to reload");
			return;
		}
		char err[512];
		reload(s, err, sizeof err);
		return;
	}
	if (s->stopping) {
		log_warn("second signal: stopping now; messages in flight stay "
			"queued and are sent again on restart");
		ev_break(s->loop, EVBREAK_ALL);
		return;
	}
	begin_stop(s);
}

static int load_keys(struct srv *s, char *err, size_t errlen)
{
	const struct cf *cf = s->cf;
	size_t n = 0;
	const char *keys[2] = { cf->dkim_key, cf->dkim_key2 };
	const char *sels[2] = { cf->dkim_selector, cf->dkim_selector2 };
	for (int i = 0; i < 2; i++) {
		if (!keys[i] || !*keys[i])
			continue;
		s->signers[n] = dkim_signer_new(cf->dkim_domain, sels[i], keys[i],
			err, errlen);
		if (!s->signers[n])
			return -1;
		n++;
	}
	s->env.signers = s->signers;
	s->env.nsigners = n;
	/* The unsubscribe key lives in the spool so tokens stay valid across
	 * restarts. */
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/unsubscribe.key", cf->spool);
	FILE *f = fopen(path, "rb");
	if (f) {
		size_t got = fread(s->unsub_key, 1, sizeof s->unsub_key, f);
		fclose(f);
		if (got != sizeof s->unsub_key) {
			snprintf(err, errlen, "%s: expected %zu bytes", path,
				sizeof s->unsub_key);
			return -1;
		}
	} else {
		if (getrandom(s->unsub_key, sizeof s->unsub_key, 0) !=
		    (ssize_t)sizeof s->unsub_key) {
			snprintf(err, errlen, "getrandom: %s", strerror(errno));
			return -1;
		}
		f = fopen(path, "wbx");
		if (!f || fwrite(s->unsub_key, 1, sizeof s->unsub_key, f) !=
		    sizeof s->unsub_key) {
			snprintf(err, errlen, "cannot write %s: %s", path,
				strerror(errno));
			if (f)
				fclose(f);
			return -1;
		}
		fclose(f);
	}
	s->env.unsub_key = s->unsub_key;
	s->env.unsub_keylen = sizeof s->unsub_key;
	s->hostname = mem_strdup(cf->hostname);
	s->bounce_domain = mem_strdup(cf->bounce_domain ? cf->bounce_domain :
		"");
	s->env.hostname = s->hostname;
	s->env.bounce_domain = s->bounce_domain;
	return 0;
}

int srv_run(struct cf *cf)
{
	struct srv *s = mem_calloc(1, sizeof *s);
	char err[1024];
	int status = 1;
	s->cf = cf;
	s->loop = ev_default_loop(EVFLAG_AUTO);
	s->started_ms = now_ms();
	pthread_mutex_init(&s->mu, NULL);
	signal(SIGPIPE, SIG_IGN);

	default_hostname(cf);
	int lvl = log_level_parse(cf->log_level);
	if (lvl >= 0)
		log_set_level((enum log_level)lvl);

	struct q_config qc = { cf->spool, cf->map_size, 0,
		cf->sync == CF_SYNC_FULL ? Q_SYNC_FULL : cf->sync == CF_SYNC_NONE
		? Q_SYNC_NONE : Q_SYNC_GROUP };
	if (q_open(&qc, &s->q, err, sizeof err) < 0)
		goto fail;
	if (!(s->ev = evlog_open(cf->event_log, err, sizeof err)))
		goto fail;
	if (load_keys(s, err, sizeof err) < 0)
		goto fail;
	struct cm_ops cops = { on_committed };
	if (!(s->cm = cm_new(s->q, s->ev, s->loop, cf->group_window_ms, &cops,
	    s, err, sizeof err)))
		goto fail;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned threads = cf->render_threads ? cf->render_threads
		: (unsigned)(ncpu > 0 ? ncpu : 1);
	struct rd_ops rops = { on_rendered };
	if (!(s->rd = rd_new(s->q, s->ev, s->loop, threads, 512,
	    cf->render_ahead, &s->env, &rops, s, err, sizeof err)))
		goto fail;
	if (!(s->dl = dl_new(s->loop, cf, s->q, s->cm, s->ev, &s->env, err,
	    sizeof err)))
		goto fail;
	ev_async_init(&s->intake_wake, intake_wake_cb);
	s->intake_wake.data = s;
	ev_async_start(s->loop, &s->intake_wake);
	if (recover(s, err, sizeof err) < 0)
		goto fail;
	struct ctl_ops ops = { on_request };
	if (!(s->ctl = ctl_new(s->loop, cf->socket, &ops, s, err, sizeof err)))
		goto fail;

	ev_signal_init(&s->sigterm, on_signal, SIGTERM);
	ev_signal_init(&s->sigint, on_signal, SIGINT);
	ev_signal_init(&s->sighup, on_signal, SIGHUP);
	s->sigterm.data = s->sigint.data = s->sighup.data = s;
	ev_signal_start(s->loop, &s->sigterm);
	ev_signal_start(s->loop, &s->sigint);
	ev_signal_start(s->loop, &s->sighup);

	log_info("carteiro ready: socket %s, spool %s, sync %s, %u render "
		"threads%s", cf->socket, cf->spool, cf_sync_name(cf->sync), threads,
		cf->file ? "" : ", embedded defaults");
	ev_run(s->loop, 0);
	status = 0;
	goto out;
fail:
	log_err("%s", err);
out:
	ctl_free(s->ctl);
	while (s->intakes) {
		/* cancelled in begin_stop; wait for each to report */
		s->intakes->cancel = 1;
		pthread_mutex_lock(&s->mu);
		bool any = s->intake_done != NULL;
		pthread_mutex_unlock(&s->mu);
		if (any)
			intake_wake_cb(s->loop, &s->intake_wake, 0);
		else
			usleep(10000);
	}
	rd_free(s->rd);
	dl_free(s->dl);
	cm_free(s->cm);
	if (s->intake_wake.data)
		ev_async_stop(s->loop, &s->intake_wake);
	for (size_t i = 0; i < s->ncamps; i++) {
		camp_unref(s->camps[i]->camp);
		free(s->camps[i]);
	}
	free(s->camps);
	for (size_t i = 0; i < 2; i++)
		dkim_signer_free(s->signers[i]);
	evlog_close(s->ev);
	q_close(s->q);
	pthread_mutex_destroy(&s->mu);
	cf_free(s->cf);
	free(s->cf);
	free(s->hostname);
	free(s->bounce_domain);
	free(s);
	return status;
}
