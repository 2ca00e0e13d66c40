/*
 * delivery — the scheduler and delivery loop; see delivery.h.
 *
 * Objects (all owned by struct dl, loop thread only):
 *   dcamp  a campaign being pulled: cursor in the due index, paused flag
 *   dmsg   a message in memory (in flight): from pull until its outcome is
 *          committed; listed in `inflight` by id
 *   ddom   a recipient domain: resolution state, queue of its messages,
 *          the site it belongs to
 *   dsite  a destination: ordered hosts/addresses, sessions, limits, the
 *          ring of its domains that have messages waiting
 *   dsess  one SMTP session of a site, with the messages handed to it
 */
#include "engine/delivery.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ctype.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "engine/dns.h"
#include "engine/htab.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/shape.h"
#include "engine/smtp.h"
#include "engine/tls.h"
#include "engine/whatsapp.h"

#define PULL_CHUNK 512
#define HOST_DOWN_SECS 60.0
#define TEMPFAIL_CACHE_SECS 30.0
/* A short suspension keeps up to this many of a site's messages in memory. */
#define SUSPEND_HOLD 500.0

struct dsite;
struct ddom;

struct dmsg {
	uint64_t id;
	struct q_due due;
	uint16_t attempts;
	uint8_t flags;
	uint64_t created_ms;
	char *rcpt;
	struct ddom *dom;
	struct dmsg *next;          /* in its domain's queue */
	char *body;                 /* loaded when handed to a session */
	size_t len;
	char *sender;               /* VERP sender, made when handed out */
	struct camp *camp;          /* borrowed: the dcamp holds a reference */
	bool wa;                    /* a WhatsApp message */
	uint64_t wa_req;            /* request id while sending */
	struct dl *owner;           /* for the WhatsApp callback */
	bool warm;                  /* counted against its site's warm-up cap */
	int32_t warm_day;
};

struct dcamp {
	uint32_t cid;
	struct camp *camp;
	bool paused;
	bool has_cursor;
	struct q_due cursor;
	uint64_t next_due;
	struct dcamp *next;
};

enum dom_state { D_NEW, D_RESOLVING, D_OK, D_ERR };

struct dq {
	uint32_t cid;
	bool prio;                  /* transactional */
	struct dmsg *head, **tail;
	size_t n;
};

struct ddom {
	struct dl *d;
	char *name;
	enum dom_state st;
	uint64_t dns_req;
	double expires;
	struct dsite *site;
	bool err_permanent;
	char err[256];
	/* Waiting messages, one FIFO per campaign: transactional campaigns
	 * are served first, bulk ones round-robin (fairness inside a site). */
	struct dq *q;
	size_t nqs, qcap, rr;
	size_t nq;                  /* messages in all FIFOs */
	bool in_ring;
	struct ddom *ring_next;
};

struct dhost {
	char name[256];
	struct sockaddr_storage addr;
	socklen_t len;
	double down_until;
};

struct dsess;

struct dsite {
	char *key;
	struct dhost *hosts;
	size_t nhosts;
	size_t next_host;
	struct ddom *ring;          /* domains with waiting messages (circular) */
	size_t queued;
	unsigned nsess;
	unsigned nquitting;         /* sessions told to QUIT, not ended yet */
	unsigned max_conn;
	unsigned max_msgs;
	int tls;                    /* enum cf_tls */
	struct dsess *sessions;
	unsigned ndomains;
	double backoff_until;       /* no MX host reachable */

	/* shaping (engine/shape, docs/shaping.md) */
	struct dl *d;
	char *domain;               /* the first domain: its [domain] override */
	double rate_cfg;            /* messages/s configured, 0 = unlimited */
	double burst_cfg;           /* 0 = one second of rate */
	double conn_rate_cfg;
	struct sh_bucket bucket;    /* messages */
	struct sh_bucket conn_bucket;
	struct sh_adapt adapt;
	double adapt_base;          /* rate step-downs apply to when none is
	                             * configured: the observed rate */
	double obs_start, obs_rate; /* observed messages/s */
	unsigned obs_n;
	uint32_t warm[CF_WARMUP_MAX];
	size_t nwarm;
	bool warm_loaded;
	int32_t warm_first, warm_day;
	uint32_t warm_count;
	bool warm_full_logged;
	char last_rule[208];
	char last_reply[208];
	uint64_t sent;              /* messages handed to sessions */
	ev_timer wake;              /* tokens, suspension end, step up */
	struct dsite *slot_next;    /* waiting for an engine-wide slot */
	bool slot_wait;
};

/* A local address to send from ([smtp] source). */
struct dsource {
	char name[64];
	struct sockaddr_storage addr;
	socklen_t len;
	unsigned nsess;
	uint64_t sent;
	struct sh_bucket bucket;
};

struct dsess {
	struct dl *d;
	struct dsite *site;
	struct smtp_session *s;
	size_t host;
	int src;                    /* index in d->src, -1 = none */
	bool idle;
	bool quitting;              /* over the site's (stepped-down) limit */
	struct dmsg *handed;        /* messages given to the session */
	struct dsess *next;
};

struct dl {
	struct ev_loop *loop;
	const struct cf *cf;
	q_env *q;
	cm *cm;
	struct rd_env env;
	dns_resolver *dns;
	struct tls_client *tls;
	evlog *ev;
	q_zctx *z;                  /* reading compressed bodies */
	struct sh_policy pol;
	struct dsource *src;
	size_t nsrc;
	size_t src_rr;
	/* Sites that wanted a session while every engine-wide slot ([smtp]
	 * max_connections) was taken, in order: a session that ends hands
	 * its slot to the first. */
	struct dsite *slot_head, **slot_tail;

	struct dcamp *camps;
	ht_set inflight;
	size_t active;              /* dmsgs alive (inflight count) */
	ht_map domains;
	ht_map sites;
	unsigned nsess;
	uint64_t sess_ids;
	bool draining;

	ev_timer pull_timer;        /* periodic */
	ev_timer soon;              /* coalesced immediate pull */

	wa_client *wa;              /* NULL: the WhatsApp channel is off */
	unsigned wa_claimed;        /* claimed and not finished: a crash can
	                             * interrupt at most this many */
	bool wa_paused;             /* token refused: until a reload */
	double wa_backoff_until;    /* client queue full */
};

static void pull(struct dl *d);
static void site_kick(struct dl *d, struct dsite *st);
static void slot_kick(struct dl *d);
static void wa_claim(struct dl *d, struct dmsg *m);
static void wa_send_claimed(struct dl *d, struct dmsg *m);

static double now_s(struct dl *d)
{
	return ev_now(d->loop);
}

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double wall_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- outcomes ---- */

static const char *const categories[] = { "", "bad_mailbox", "mailbox_full",
	"too_large", "policy_spam", "auth_dmarc", "other", "bad_domain" };

int dl_category_code(const char *name)
{
	if (!name)
		return 0;
	for (size_t i = 1; i < sizeof categories / sizeof *categories; i++)
		if (strcmp(categories[i], name) == 0)
			return (int)i;
	return 6;
}

const char *dl_category_name(int code)
{
	return code > 0 && (size_t)code < sizeof categories / sizeof *categories
		? categories[code] : "other";
}

static void dmsg_free(struct dmsg *m)
{
	free(m->rcpt);
	free(m->body);
	free(m->sender);
	free(m);
}

/*
 * Record what happened to `m`: kind is Q_DELIVERED, Q_BOUNCED or Q_QUEUED
 * (deferred). The message stays in flight until the commit comes back.
 */
static void outcome_ex(struct dl *d, struct dmsg *m, uint8_t kind,
	const char *site, const char *mx, int code, const char *enhanced,
	const char *reply, const char *category, const char *tls, double ms,
	bool suppress, uint64_t retry_ms, bool no_attempt, const char *extra);

static void outcome(struct dl *d, struct dmsg *m, uint8_t kind,
	const char *site, const char *mx, int code, const char *enhanced,
	const char *reply, const char *category, const char *tls, double ms,
	bool suppress)
{
	outcome_ex(d, m, kind, site, mx, code, enhanced, reply, category, tls,
		ms, suppress, 0, false, NULL);
}

static void outcome_ex(struct dl *d, struct dmsg *m, uint8_t kind,
	const char *site, const char *mx, int code, const char *enhanced,
	const char *reply, const char *category, const char *tls, double ms,
	bool suppress, uint64_t retry_ms, bool no_attempt, const char *extra)
{
	struct cm_outcome *o = cm_outcome_new();
	uint64_t now = wall_ms();
	o->id = m->id;
	o->due = m->due;
	o->attempts = (uint16_t)(m->attempts + (no_attempt ? 0 : 1));
	o->no_attempt = no_attempt;
	o->now_ms = now;
	o->ref = m;
	cm_outcome_text(o, m->rcpt, reply ? reply : "");
	const char *event;
	if (!no_attempt && m->warm && m->dom && m->dom->site) {
		o->warm_site = mem_strdup(m->dom->site->key);
		o->warm_day = m->warm_day;
	}
	if (kind == Q_QUEUED && (retry_ms || no_attempt)) {
		/* WhatsApp: the API's delay; a put-back (postponed: not an
		 * attempt) by a channel or a site that may not send now. */
		o->new_due = now + (retry_ms ? retry_ms : 1000);
		event = no_attempt ? "postponed" : "deferred";
	} else if (kind == Q_QUEUED) {
		const struct cf *cf = d->cf;
		if (now >= m->created_ms + cf->max_age_ms) {
			kind = Q_EXPIRED;
			event = "expired";
		} else {
			size_t i = m->attempts < cf->nretry ? m->attempts
				: cf->nretry - 1;
			double delay = cf->nretry ? (double)cf->retry[i] : 300000.0;
			double j = cf->retry_jitter_pct / 100.0;
			delay *= 1.0 + j * (2.0 * drand48() - 1.0);
			o->new_due = now + (uint64_t)(delay > 1000 ? delay : 1000);
			if (o->new_due > m->created_ms + cf->max_age_ms)
				o->new_due = m->created_ms + cf->max_age_ms;
			event = "deferred";
		}
	} else if (m->wa) {
		event = kind == Q_DELIVERED ? "whatsapp_sent" : "whatsapp_failed";
	} else {
		event = kind == Q_DELIVERED ? "delivered" : "bounced";
	}
	o->state = kind;
	o->suppress = suppress && kind == Q_BOUNCED;
	o->category = (uint8_t)dl_category_code(category);
	struct evlog_event ev = {
		.event = event, .campaign = m->due.cid, .msg = m->id,
		.rcpt = m->rcpt, .site = site, .mx = mx, .code = code,
		.enhanced = enhanced, .reply = reply, .category = category,
		.tls = tls, .attempt = o->attempts, .ms = ms, .extra = extra,
	};
	evlog_format(&o->event, wall_s(), &ev);
	cm_push(d->cm, o);
}

void dl_committed(dl *d, struct cm_outcome *list)
{
	while (list) {
		struct cm_outcome *n = list->next;
		struct dmsg *m = list->ref;
		if (list->state == Q_SENDING) {
			/* A WhatsApp claim came back. */
			bool ok = list->committed && list->claimed;
			cm_outcome_free(list);
			list = n;
			if (ok) {
				/* Sent even while stopping: the stop waits for it. */
				wa_send_claimed(d, m);
			} else {
				/* Refused: cancelled meanwhile, or not committed (it
				 * stays due and is claimed again). */
				d->wa_claimed--;
				ht_set_del(&d->inflight, m->id);
				d->active--;
				dmsg_free(m);
			}
			continue;
		}
		if (!list->committed)
			for (struct dcamp *c = d->camps; c; c = c->next)
				if (c->cid == m->due.cid)
					c->has_cursor = false;
		ht_set_del(&d->inflight, m->id);
		d->active--;
		dmsg_free(m);
		cm_outcome_free(list);
		list = n;
	}
	if (!d->draining)
		ev_timer_start(d->loop, &d->soon);
}

/* ---- domains and sites ---- */

static void ring_add(struct dsite *st, struct ddom *dom)
{
	if (dom->in_ring)
		return;
	dom->in_ring = true;
	if (!st->ring) {
		dom->ring_next = dom;
		st->ring = dom;
	} else {
		dom->ring_next = st->ring->ring_next;
		st->ring->ring_next = dom;
	}
}

/* ---- a domain's waiting messages ---- */

static void dom_push(struct ddom *dom, struct dmsg *m)
{
	struct dq *q = NULL;
	for (size_t i = 0; i < dom->nqs; i++)
		if (dom->q[i].cid == m->due.cid) {
			q = &dom->q[i];
			break;
		}
	if (!q) {
		if (dom->nqs == dom->qcap) {
			size_t cap = dom->qcap ? dom->qcap * 2 : 2;
			dom->q = mem_realloc(dom->q, cap * sizeof *dom->q);
			dom->qcap = cap;
			/* the tails of moved FIFOs point into the old array */
			for (size_t i = 0; i < dom->nqs; i++)
				if (!dom->q[i].head)
					dom->q[i].tail = &dom->q[i].head;
		}
		q = &dom->q[dom->nqs++];
		q->cid = m->due.cid;
		q->prio = m->camp && m->camp->priority == CAMP_TRANSACTIONAL;
		q->head = NULL;
		q->tail = &q->head;
		q->n = 0;
	}
	m->next = NULL;
	*q->tail = m;
	q->tail = &m->next;
	q->n++;
	dom->nq++;
}

/* Drop FIFOs that became empty (keeps the array short). */
static void dom_compact(struct ddom *dom)
{
	size_t k = 0;
	for (size_t i = 0; i < dom->nqs; i++) {
		if (!dom->q[i].n)
			continue;
		/* a non-empty FIFO's tail points into a message: still valid */
		if (k != i)
			dom->q[k] = dom->q[i];
		k++;
	}
	dom->nqs = k;
	if (dom->rr >= k)
		dom->rr = 0;
}

/* The next message: transactional first, then bulk campaigns in turn. */
static struct dmsg *dom_pop(struct ddom *dom)
{
	if (!dom->nq)
		return NULL;
	struct dq *q = NULL;
	for (int pass = 0; pass < 2 && !q; pass++)
		for (size_t k = 0; k < dom->nqs; k++) {
			size_t i = (dom->rr + k) % dom->nqs;
			if (dom->q[i].n && dom->q[i].prio == (pass == 0)) {
				q = &dom->q[i];
				dom->rr = i + 1;
				break;
			}
		}
	struct dmsg *m = q->head;
	q->head = m->next;
	if (!q->head)
		q->tail = &q->head;
	q->n--;
	dom->nq--;
	m->next = NULL;
	if (!q->n)
		dom_compact(dom);
	return m;
}

/* Take out every waiting message of cid (all when cid == 0), as a list. */
static struct dmsg *dom_take(struct ddom *dom, uint32_t cid)
{
	struct dmsg *out = NULL;
	for (size_t i = 0; i < dom->nqs; i++) {
		struct dq *q = &dom->q[i];
		if ((cid && q->cid != cid) || !q->n)
			continue;
		*q->tail = out;
		out = q->head;
		dom->nq -= q->n;
		q->head = NULL;
		q->tail = &q->head;
		q->n = 0;
	}
	dom_compact(dom);
	return out;
}

/* Next message of the site, round-robin over its domains. */
static struct dmsg *site_pop(struct dsite *st)
{
	while (st->ring) {
		struct ddom *dom = st->ring->ring_next;
		struct dmsg *m = dom_pop(dom);
		if (m) {
			st->queued--;
			st->ring = dom;          /* advance */
			if (dom->nq)
				return m;
		}
		/* dom is empty: unlink it from the ring */
		if (dom->ring_next == dom) {
			st->ring = NULL;
		} else {
			struct ddom *prev = st->ring;
			while (prev->ring_next != dom)
				prev = prev->ring_next;
			prev->ring_next = dom->ring_next;
			if (st->ring == dom)
				st->ring = prev;
		}
		dom->in_ring = false;
		if (m)
			return m;
	}
	return NULL;
}

static const struct cf_site *site_conf(const struct cf *cf, const char *name,
	bool is_domain)
{
	for (size_t i = 0; i < cf->nsites; i++)
		if (cf->sites[i].is_domain == is_domain &&
		    strcasecmp(cf->sites[i].name, name) == 0)
			return &cf->sites[i];
	return NULL;
}

/* The rate the site may send at now: configured (or observed, once a
 * throttling reply came) times the adaptive factor. */
static double site_rate_now(const struct dsite *st)
{
	double base = st->rate_cfg > 0 ? st->rate_cfg
		: st->adapt.factor < 1 ? st->adapt_base : 0;
	return sh_scale_rate(base, st->adapt.factor);
}

static unsigned site_conn_now(const struct dsite *st)
{
	return sh_scale_conn(st->max_conn, st->adapt.factor);
}

static void site_apply_rate(struct dl *d, struct dsite *st)
{
	double r = site_rate_now(st);
	double b = st->burst_cfg > 0 ? st->burst_cfg : sh_default_burst(r);
	sh_bucket_set(&st->bucket, r, b, now_s(d));
	double cr = st->conn_rate_cfg;
	sh_bucket_set(&st->conn_bucket, cr, sh_default_burst(cr), now_s(d));
}

static void site_limits(struct dl *d, struct dsite *st, const char *domain)
{
	const struct cf *cf = d->cf;
	st->max_conn = cf->site_max_connections;
	st->max_msgs = cf->max_messages_per_connection;
	st->tls = cf->tls;
	st->rate_cfg = cf->site_rate;
	st->burst_cfg = cf->site_rate_burst;
	st->conn_rate_cfg = cf->site_connection_rate;
	const struct cf_warmup *warm = &cf->warmup;
	const struct cf_site *c = site_conf(cf, st->key, false);
	const struct cf_site *dc = domain ? site_conf(cf, domain, true) : NULL;
	for (int k = 0; k < 2; k++) {
		const struct cf_site *x = k ? dc : c;
		if (!x)
			continue;
		if (x->max_connections)
			st->max_conn = x->max_connections;
		if (x->max_messages_per_connection)
			st->max_msgs = x->max_messages_per_connection;
		if (x->tls >= 0)
			st->tls = x->tls;
		if (x->rate >= 0)
			st->rate_cfg = x->rate;
		if (x->rate_burst)
			st->burst_cfg = x->rate_burst;
		if (x->connection_rate >= 0)
			st->conn_rate_cfg = x->connection_rate;
		if (x->warmup.set)
			warm = &x->warmup;
	}
	memcpy(st->warm, warm->days, warm->n * sizeof *warm->days);
	st->nwarm = warm->n;
	site_apply_rate(d, st);
}

static void site_wake_cb(struct ev_loop *loop, ev_timer *w, int revents);

static struct dsite *site_get(struct dl *d, const char *key,
	const char *domain)
{
	struct dsite *st = ht_get(&d->sites, key);
	if (st)
		return st;
	st = mem_calloc(1, sizeof *st);
	st->key = mem_strdup(key);
	st->domain = domain ? mem_strdup(domain) : NULL;
	st->d = d;
	sh_adapt_init(&st->adapt);
	sh_bucket_init(&st->bucket, 0, 1, now_s(d));
	sh_bucket_init(&st->conn_bucket, 0, 1, now_s(d));
	st->obs_start = now_s(d);
	ev_timer_init(&st->wake, site_wake_cb, 1.0, 0.0);
	st->wake.data = st;
	site_limits(d, st, domain);
	/* A new site may send a full burst at once. */
	st->bucket.tokens = st->bucket.burst;
	st->conn_bucket.tokens = st->conn_bucket.burst;
	ht_put(&d->sites, key, st);
	return st;
}

/* Wake the site in `secs` (or sooner if already armed sooner). */
static void site_arm(struct dl *d, struct dsite *st, double secs)
{
	if (secs < 0.001)
		secs = 0.001;
	if (ev_is_active(&st->wake) &&
	    ev_timer_remaining(d->loop, &st->wake) <= secs)
		return;
	ev_timer_stop(d->loop, &st->wake);
	ev_timer_set(&st->wake, secs, 0);
	ev_timer_start(d->loop, &st->wake);
}

static void site_event(struct dl *d, struct dsite *st, const char *event,
	int code, const char *reply)
{
	char extra[512];
	buf_t r = BUF_INIT;
	cf_format_rate(site_rate_now(st), &r);
	snprintf(extra, sizeof extra, "\"connections\":%u,\"rate\":\"%s\","
		"\"factor\":%.3f,\"suspended_s\":%.0f",
		site_conn_now(st), buf_cstr(&r), st->adapt.factor,
		sh_suspended(&st->adapt, now_s(d))
		? st->adapt.suspended_until - now_s(d) : 0.0);
	buf_t x = BUF_INIT;
	buf_adds(&x, extra);
	if (st->last_rule[0] && strcmp(event, "site_throttled") == 0) {
		buf_adds(&x, ",\"rule\":");
		evlog_json_str(&x, st->last_rule);
	}
	struct evlog_event ev = { .event = event, .site = st->key, .code = code,
		.reply = reply, .ms = -1, .extra = buf_cstr(&x) };
	evlog_emit(d->ev, &ev);
	log_info("site %s: %s: %u connections, rate %s, factor %.2f%s%s", st->key,
		event, site_conn_now(st), buf_cstr(&r), st->adapt.factor,
		reply ? ": " : "", reply ? reply : "");
	buf_free(&r);
	buf_free(&x);
}

/* Put a message back without counting an attempt: due again at until_ms. */
static void postpone(struct dl *d, struct dmsg *m, uint64_t until_ms,
	const char *site, const char *why)
{
	uint64_t now = wall_ms();
	uint64_t delay = until_ms > now + 1000 ? until_ms - now : 1000;
	outcome_ex(d, m, Q_QUEUED, site, NULL, 0, NULL, why, NULL, NULL, -1,
		false, delay, true, NULL);
}

static void site_postpone_all(struct dl *d, struct dsite *st,
	uint64_t until_ms, const char *why)
{
	struct dmsg *m;
	while ((m = site_pop(st)))
		postpone(d, m, until_ms, st->key, why);
}

/* Warm-up: today's cap of the site and what was sent today. */
static void warm_refresh(struct dl *d, struct dsite *st)
{
	time_t now = (time_t)(wall_ms() / 1000);
	int32_t today = sh_day(now);
	if (!st->warm_loaded) {
		q_txn *t;
		char err[256];
		struct q_warmup w;
		st->warm_first = today;
		st->warm_day = today;
		st->warm_count = 0;
		if (q_begin(d->q, false, &t, err, sizeof err) == 0) {
			if (q_warmup_get(t, st->key, &w) == 1) {
				st->warm_first = w.first_day;
				if (w.day == today)
					st->warm_count = w.count;
			}
			q_abort(t);
		} else {
			log_err("site %s: warm-up record: %s", st->key, err);
		}
		st->warm_loaded = true;
	}
	if (st->warm_day != today) {
		st->warm_day = today;
		st->warm_count = 0;
		st->warm_full_logged = false;
	}
}

static uint32_t warm_cap(struct dl *d, struct dsite *st)
{
	if (!st->nwarm)
		return UINT32_MAX;
	warm_refresh(d, st);
	return sh_warmup_cap(st->warm, st->nwarm, st->warm_first, st->warm_day);
}

/* The site reached today's warm-up cap: what waits goes to tomorrow. */
static bool warm_full(struct dl *d, struct dsite *st)
{
	uint32_t cap = warm_cap(d, st);
	if (cap == UINT32_MAX || st->warm_count < cap)
		return false;
	time_t now = (time_t)(wall_ms() / 1000);
	char why[400];
	snprintf(why, sizeof why, "warm-up: site %.200s reached today's cap of "
		"%u messages (day %d of the schedule); waits for tomorrow",
		st->key, cap, (int)(st->warm_day - st->warm_first + 1));
	if (!st->warm_full_logged) {
		st->warm_full_logged = true;
		struct evlog_event ev = { .event = "site_warmup_cap",
			.site = st->key, .reply = why, .ms = -1 };
		evlog_emit(d->ev, &ev);
		log_info("%s", why);
	}
	site_postpone_all(d, st, (uint64_t)sh_next_day(now) * 1000, why);
	return true;
}

/*
 * The site is suspended. A short suspension (under [backoff]
 * postpone_after) is waited out in memory (at most SUSPEND_HOLD messages;
 * pull leaves the rest due in the queue): no queue writes for a pause of
 * seconds. A long one puts the waiting messages back in the queue, due
 * when it ends. Either way nothing is
 * tried and no attempt is counted.
 */
static void site_suspended(struct dl *d, struct dsite *st)
{
	double left = st->adapt.suspended_until - now_s(d);
	if (left < d->cf->backoff_postpone_ms / 1000.0) {
		site_arm(d, st, left + 0.001);
		return;
	}
	char why[300];
	snprintf(why, sizeof why, "site %.200s suspended: %.80s", st->key,
		st->last_reply);
	site_postpone_all(d, st, wall_ms() + (uint64_t)(left * 1000), why);
	site_arm(d, st, left + 0.001);
}

/* A reply from the site (any non-2xx): does a backoff rule match? */
static void site_reply(struct dl *d, struct dsite *st, int code,
	const char *reply)
{
	if (code < 400 || !reply || !*reply)
		return;
	const struct cf *cf = d->cf;
	const struct cf_rule *r = NULL;
	for (size_t i = 0; !r && i < cf->nrules; i++)
		if (sh_rule_match(cf->rules[i].pattern, reply))
			r = &cf->rules[i];
	if (!r && cf->backoff_builtin) {
		size_t nb;
		const struct cf_rule *b = cf_builtin_rules(&nb);
		for (size_t i = 0; !r && i < nb; i++)
			if (sh_rule_match(b[i].pattern, reply))
				r = &b[i];
	}
	if (!r)
		return;
	double now = now_s(d);
	if (st->rate_cfg <= 0 && st->adapt.factor >= 1) {
		/* No rate configured: step down from the rate it was getting
		 * over the last full observation window. Before one exists
		 * (the very first replies) only connections step down. */
		st->adapt_base = st->obs_rate;
	}
	bool was_suspended = sh_suspended(&st->adapt, now);
	int what = sh_adapt_hit(&st->adapt, &d->pol, r->slow_pct,
		r->suspend_ms / 1000.0, now);
	if (what & SH_DOWN)
		site_apply_rate(d, st);
	if ((what & SH_DOWN) || ((what & SH_SUSPEND) && !was_suspended)) {
		snprintf(st->last_rule, sizeof st->last_rule, "%s", r->pattern);
		snprintf(st->last_reply, sizeof st->last_reply, "%s", reply);
		site_event(d, st, "site_throttled", code, reply);
	}
	if (what & SH_SUSPEND) {
		site_suspended(d, st);
		for (struct dsess *x = st->sessions; x; x = x->next)
			if (x->idle)
				smtp_kick(x->s);   /* it sees the suspension: QUIT */
	}
	double next = sh_adapt_next_tick(&st->adapt, &d->pol);
	if (isfinite(next))
		site_arm(d, st, next - now);
}

/* Step back up after a quiet period; returns true when it did. */
static void site_tick(struct dl *d, struct dsite *st)
{
	double now = now_s(d);
	if (sh_adapt_tick(&st->adapt, &d->pol, now)) {
		site_apply_rate(d, st);
		site_event(d, st, st->adapt.factor >= 1 ? "site_recovered"
			: "site_step_up", 0, NULL);
	}
	double next = sh_adapt_next_tick(&st->adapt, &d->pol);
	if (isfinite(next))
		site_arm(d, st, next - now);
}

/* Observed rate, over windows of a few seconds. */
static void site_count(struct dl *d, struct dsite *st)
{
	double now = now_s(d);
	st->sent++;
	st->obs_n++;
	if (now - st->obs_start >= 5) {
		st->obs_rate = st->obs_n / (now - st->obs_start);
		st->obs_start = now;
		st->obs_n = 0;
	}
}

static void defer_all(struct dl *d, struct ddom *dom, bool permanent,
	const char *why, const char *category)
{
	size_t n = dom->nq;
	struct dmsg *m = dom_take(dom, 0);
	if (dom->site && dom->in_ring)
		dom->site->queued -= n;
	while (m) {
		struct dmsg *next = m->next;
		outcome(d, m, permanent ? Q_BOUNCED : Q_QUEUED, NULL, NULL, 0, NULL,
			why, permanent ? category : NULL, NULL, -1, false);
		m = next;
	}
}

/* Site key for a resolved domain: a [site] whose mx pattern matches one of
 * the MX hosts, else the sorted MX host names (MX rollup). */
static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void dns_done(void *arg, const struct dns_result *r);

static void resolve(struct dl *d, struct ddom *dom)
{
	const struct cf_route *rt = cf_route_find(d->cf, dom->name);
	if (rt) {
		/* A static next hop: the site is the route target. */
		char key[320];
		snprintf(key, sizeof key, "route:%s:%u", rt->host, rt->port);
		struct dsite *st = ht_get(&d->sites, key);
		if (!st) {
			struct dhost h = { 0 };
			struct sockaddr_in *a4 = (struct sockaddr_in *)&h.addr;
			struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&h.addr;
			snprintf(h.name, sizeof h.name, "%s", rt->host);
			if (inet_pton(AF_INET, rt->host, &a4->sin_addr) == 1) {
				a4->sin_family = AF_INET;
				a4->sin_port = htons(rt->port);
				h.len = sizeof *a4;
			} else if (inet_pton(AF_INET6, rt->host, &a6->sin6_addr) == 1) {
				a6->sin6_family = AF_INET6;
				a6->sin6_port = htons(rt->port);
				h.len = sizeof *a6;
			} else {
				/* A host name: resolve it like a domain (its own
				 * MX or A/AAAA), then use the route's port. */
				goto by_dns;
			}
			st = site_get(d, key, dom->name);
			st->hosts = mem_memdup(&h, sizeof h);
			st->nhosts = 1;
		}
		dom->site = st;
		st->ndomains++;
		dom->st = D_OK;
		dom->expires = INFINITY;
		return;
	}
by_dns:
	dom->st = D_RESOLVING;
	dom->dns_req = dns_lookup(d->dns, rt ? rt->host : dom->name, dns_done,
		dom);
}

/* Messages of a domain that just became usable go to its site. */
static void dom_ready(struct dl *d, struct ddom *dom)
{
	struct dsite *st = dom->site;
	if (!dom->nq)
		return;
	if (!dom->in_ring) {
		ring_add(st, dom);
		st->queued += dom->nq;
	}
	site_kick(d, st);
}

static void site_from_result(struct dl *d, struct ddom *dom,
	const struct dns_result *r)
{
	const struct cf_route *rt = cf_route_find(d->cf, dom->name);
	char key[1024];
	size_t n = r->nhosts;
	const char **names = mem_calloc(n ? n : 1, sizeof *names);
	const char *named = NULL;
	for (size_t i = 0; i < n; i++) {
		names[i] = r->hosts[i].name;
		/* [site NAME] with a matching mx pattern names the site. */
		for (size_t k = 0; !named && k < d->cf->nsites; k++) {
			const struct cf_site *cs = &d->cf->sites[k];
			for (size_t p = 0; !cs->is_domain && p < cs->nmx; p++)
				if (fnmatch(cs->mx[p], names[i], FNM_CASEFOLD) == 0)
					named = cs->name;
		}
	}
	if (rt) {
		snprintf(key, sizeof key, "route:%s:%u", rt->host, rt->port);
	} else if (named) {
		snprintf(key, sizeof key, "%s", named);
	} else {
		/* MX rollup: the sorted set of MX host names. */
		qsort(names, n, sizeof *names, cmp_str);
		buf_t b = BUF_INIT;
		for (size_t i = 0; i < n; i++) {
			if (i && strcmp(names[i], names[i - 1]) == 0)
				continue;
			buf_printf(&b, "%s%s", b.len ? "," : "", names[i]);
		}
		snprintf(key, sizeof key, "%s", b.len ? buf_cstr(&b) : dom->name);
		buf_free(&b);
	}
	free(names);
	struct dsite *st = site_get(d, key, dom->name);
	if (!st->nhosts || now_s(d) > 0) {
		/* (Re)build the host list from this answer: preference order
		 * as the resolver gave it (equal preferences shuffled). */
		size_t total = 0;
		for (size_t i = 0; i < r->nhosts; i++)
			total += r->hosts[i].naddrs;
		if (total) {
			struct dhost *h = mem_calloc(total, sizeof *h);
			size_t k = 0;
			for (size_t i = 0; i < r->nhosts; i++)
				for (size_t a = 0; a < r->hosts[i].naddrs; a++) {
					struct dhost *x = &h[k++];
					snprintf(x->name, sizeof x->name, "%s",
						r->hosts[i].name);
					memcpy(&x->addr, &r->hosts[i].addrs[a],
						sizeof x->addr);
					uint16_t port = rt ? rt->port : 25;
					if (x->addr.ss_family == AF_INET6) {
						((struct sockaddr_in6 *)&x->addr)->sin6_port =
							htons(port);
						x->len = sizeof(struct sockaddr_in6);
					} else {
						((struct sockaddr_in *)&x->addr)->sin_port =
							htons(port);
						x->len = sizeof(struct sockaddr_in);
					}
					/* keep what we knew about a host being down */
					for (size_t o = 0; o < st->nhosts; o++)
						if (st->hosts[o].len == x->len &&
						    memcmp(&st->hosts[o].addr, &x->addr,
						    x->len) == 0)
							x->down_until = st->hosts[o].down_until;
				}
			free(st->hosts);
			st->hosts = h;
			st->nhosts = total;
			if (st->next_host >= total)
				st->next_host = 0;
		}
	}
	if (dom->site != st) {
		dom->site = st;
		st->ndomains++;
	}
}

static void dns_done(void *arg, const struct dns_result *r)
{
	struct ddom *dom = arg;
	struct dl *d = dom->d;
	dom->dns_req = 0;
	double ttl = r->ttl > 0 ? r->ttl : 60;
	switch (r->status) {
	case DNS_OK:
		site_from_result(d, dom, r);
		dom->st = D_OK;
		dom->expires = now_s(d) + ttl;
		dom_ready(d, dom);
		return;
	case DNS_NXDOMAIN:
	case DNS_NULLMX:
		dom->st = D_ERR;
		dom->err_permanent = true;
		dom->expires = now_s(d) + ttl;
		snprintf(dom->err, sizeof dom->err, "%s: %s", dom->name,
			r->status == DNS_NULLMX ? "the domain accepts no mail "
			"(null MX)" : "no such domain");
		break;
	default:
		dom->st = D_ERR;
		dom->err_permanent = dns_permanent(r);
		dom->expires = now_s(d) + (dom->err_permanent ? ttl
			: TEMPFAIL_CACHE_SECS);
		snprintf(dom->err, sizeof dom->err, "%s: %s", dom->name,
			r->message ? r->message : "DNS failure");
		break;
	}
	defer_all(d, dom, dom->err_permanent, dom->err, "bad_domain");
}

static void enqueue(struct dl *d, struct dmsg *m)
{
	const char *at = strrchr(m->rcpt, '@');
	char name[256];
	size_t i = 0;
	for (const char *p = at ? at + 1 : ""; *p && i < sizeof name - 1; p++)
		name[i++] = (char)tolower((unsigned char)*p);
	name[i] = 0;
	struct ddom *dom = ht_get(&d->domains, name);
	if (!dom) {
		dom = mem_calloc(1, sizeof *dom);
		dom->d = d;
		dom->name = mem_strdup(name);
		ht_put(&d->domains, name, dom);
	}
	m->dom = dom;
	dom_push(dom, m);
	/* A domain in its site's ring counts toward the site's queue, also
	 * while its cached answer is being renewed (D_NEW, D_RESOLVING). */
	if (dom->in_ring)
		dom->site->queued++;
	if ((dom->st == D_OK || dom->st == D_ERR) && now_s(d) >= dom->expires)
		dom->st = D_NEW;        /* the cached answer expired */
	switch (dom->st) {
	case D_NEW:
		resolve(d, dom);
		if (dom->st == D_OK)
			dom_ready(d, dom);
		break;
	case D_RESOLVING:
		break;
	case D_OK:
		dom_ready(d, dom);
		break;
	case D_ERR:
		defer_all(d, dom, dom->err_permanent, dom->err, "bad_domain");
		break;
	}
}

/* ---- sessions ---- */

static bool load_body(struct dl *d, struct dmsg *m)
{
	q_txn *t;
	char err[256];
	if (q_begin(d->q, false, &t, err, sizeof err))
		return false;
	buf_t b = BUF_INIT;
	int rc = q_body_read(t, d->z, m->id, &b, err, sizeof err);
	q_abort(t);
	if (rc < 0)
		log_err("delivery: %s", err);
	if (rc != 1) {
		buf_free(&b);
		return false;
	}
	m->len = b.len;
	m->body = buf_steal(&b, NULL);
	return true;
}

static enum smtp_next sess_next(void *owner, struct smtp_session *s,
	struct smtp_msg *out)
{
	struct dsess *x = owner;
	struct dl *d = x->d;
	struct dsite *st = x->site;
	(void)s;
	if (d->draining)
		return SMTP_NEXT_QUIT;
	/* Stepped down or suspended: sessions beyond the limit end. */
	if (!x->quitting && (sh_suspended(&st->adapt, now_s(d)) ||
	    st->nsess - st->nquitting > site_conn_now(st))) {
		x->quitting = true;
		st->nquitting++;
	}
	if (x->quitting)
		return SMTP_NEXT_QUIT;
	struct dsource *src = x->src >= 0 ? &d->src[x->src] : NULL;
	for (;;) {
		if (!st->queued || warm_full(d, st)) {
			x->idle = true;
			return SMTP_NEXT_WAIT;
		}
		/* Rate: a token of the site and of the source address. */
		double w = sh_bucket_wait(&st->bucket, now_s(d));
		if (src) {
			double ws = sh_bucket_wait(&src->bucket, now_s(d));
			if (ws > w)
				w = ws;
		}
		if (w > 0) {
			x->idle = true;
			site_arm(d, st, w);
			return SMTP_NEXT_WAIT;
		}
		struct dmsg *m = site_pop(st);
		if (!m) {
			x->idle = true;
			return SMTP_NEXT_WAIT;
		}
		if (!load_body(d, m)) {
			/* Deleted or cancelled meanwhile: forget it quietly. */
			ht_set_del(&d->inflight, m->id);
			d->active--;
			dmsg_free(m);
			continue;
		}
		x->idle = false;
		sh_bucket_take(&st->bucket, now_s(d));
		if (src) {
			sh_bucket_take(&src->bucket, now_s(d));
			src->sent++;
		}
		site_count(d, st);
		if (st->nwarm) {
			st->warm_count++;
			m->warm = true;
			m->warm_day = st->warm_day;
		}
		m->next = x->handed;
		x->handed = m;
		memset(out, 0, sizeof *out);
		out->id = m->id;
		char snd[Q_RCPT_MAX + 1];
		rd_sender(m->camp, &d->env, m->id, snd, sizeof snd);
		free(m->sender);
		m->sender = mem_strdup(snd);
		out->sender = m->sender;
		out->rcpt = m->rcpt;
		out->data = m->body;
		out->len = m->len;
		out->flags = (m->flags & RD_8BIT ? SMTP_MSG_8BIT : 0) |
			(m->flags & RD_SMTPUTF8 ? SMTP_MSG_SMTPUTF8 : 0);
		return SMTP_NEXT_MSG;
	}
}

static struct dmsg *take_handed(struct dsess *x, uint64_t id)
{
	for (struct dmsg **pp = &x->handed; *pp; pp = &(*pp)->next)
		if ((*pp)->id == id) {
			struct dmsg *m = *pp;
			*pp = m->next;
			m->next = NULL;
			return m;
		}
	return NULL;
}

static void sess_done(void *owner, struct smtp_session *s,
	const struct smtp_msg *msg, const struct smtp_result *r)
{
	struct dsess *x = owner;
	struct dl *d = x->d;
	(void)s;
	struct dmsg *m = take_handed(x, msg->id);
	if (!m)
		return;
	free(m->body);
	m->body = NULL;
	char tls[160] = "";
	if (r->tls_version)
		snprintf(tls, sizeof tls, "%s %s", r->tls_version,
			r->tls_cipher ? r->tls_cipher : "");
	const char *mx = x->host < x->site->nhosts
		? x->site->hosts[x->host].name : NULL;
	uint8_t kind = r->kind == SMTP_DELIVERED ? Q_DELIVERED
		: r->kind == SMTP_BOUNCED ? Q_BOUNCED : Q_QUEUED;
	const char *cat = r->kind == SMTP_BOUNCED ? smtp_cat_name(r->cat)
		: NULL;
	outcome(d, m, kind, x->site->key, mx, r->code, r->enhanced, r->reply,
		cat, tls[0] ? tls : NULL, r->ms,
		r->kind == SMTP_BOUNCED && r->cat == SMTP_CAT_BAD_MAILBOX);
	if (r->kind != SMTP_DELIVERED)
		site_reply(d, x->site, r->code, r->reply);
}

static void sess_ended(void *owner, struct smtp_session *s,
	const struct smtp_end *e)
{
	struct dsess *x = owner;
	struct dl *d = x->d;
	struct dsite *st = x->site;
	(void)s;
	/* Messages the session never reported (should not happen: the
	 * session reports every message) are deferred, never lost. */
	while (x->handed) {
		struct dmsg *m = x->handed;
		x->handed = m->next;
		free(m->body);
		m->body = NULL;
		outcome(d, m, Q_QUEUED, st->key, NULL, 0, NULL,
			"session ended before the message was finished", NULL, NULL,
			-1, false);
	}
	for (struct dsess **pp = &st->sessions; *pp; pp = &(*pp)->next)
		if (*pp == x) {
			*pp = x->next;
			break;
		}
	st->nsess--;
	d->nsess--;
	if (x->quitting)
		st->nquitting--;
	if (x->src >= 0)
		d->src[x->src].nsess--;
	/* A refusal before any message (greeting, EHLO: "421 too many
	 * connections") is the site's answer too; replies to messages were
	 * checked as they came. */
	if (!d->draining && (e->conn_failed || e->stage == SMTP_STAGE_GREETING ||
	    e->stage == SMTP_STAGE_EHLO))
		site_reply(d, st, e->code, e->reply);
	if (e->try_next_mx && x->host < st->nhosts) {
		st->hosts[x->host].down_until = now_s(d) + HOST_DOWN_SECS;
		log_info("site %s: %s unusable for %.0f s: %s", st->key,
			st->hosts[x->host].name, HOST_DOWN_SECS,
			e->reply ? e->reply : "connection failed");
		/* No usable host left: the waiting messages are deferred
		 * (an attempt each), as a real MTA does. */
		bool any = false;
		for (size_t i = 0; i < st->nhosts; i++)
			if (st->hosts[i].down_until <= now_s(d))
				any = true;
		if (!any) {
			char why[300];
			snprintf(why, sizeof why, "no MX host reachable: %s",
				e->reply ? e->reply : "connection failed");
			struct dmsg *m;
			while ((m = site_pop(st)))
				outcome(d, m, Q_QUEUED, st->key, NULL, e->code, NULL,
					why, NULL, NULL, -1, false);
			st->backoff_until = now_s(d) + HOST_DOWN_SECS;
		}
	}
	free(x);
	if (!d->draining) {
		slot_kick(d);
		site_kick(d, st);
		ev_timer_start(d->loop, &d->soon);
	}
}

static const struct smtp_ops sess_ops = { sess_next, sess_done, sess_ended };

static int pick_host(struct dl *d, struct dsite *st)
{
	for (size_t k = 0; k < st->nhosts; k++) {
		size_t i = (st->next_host + k) % st->nhosts;
		if (st->hosts[i].down_until <= now_s(d)) {
			/* Sessions go to the most preferred usable host; the
			 * next one only when it is down. */
			return (int)i;
		}
	}
	return -1;
}

/* A source address for a new session to addr's family: the least busy
 * under its connection limit. -2 = none free, -1 = no pool for the family. */
static int pick_source(struct dl *d, const struct sockaddr_storage *addr)
{
	int best = -1;
	bool any = false;
	for (size_t k = 0; k < d->nsrc; k++) {
		size_t i = (d->src_rr + k) % d->nsrc;
		struct dsource *s = &d->src[i];
		if (s->addr.ss_family != addr->ss_family)
			continue;
		any = true;
		if (d->cf->source_max_connections &&
		    s->nsess >= d->cf->source_max_connections)
			continue;
		if (best < 0 || s->nsess < d->src[best].nsess)
			best = (int)i;
	}
	if (best >= 0)
		d->src_rr = (size_t)best + 1;
	return best >= 0 ? best : any ? -2 : -1;
}

static void site_kick(struct dl *d, struct dsite *st)
{
	double now = now_s(d);
	site_tick(d, st);
	if (!st->queued)
		return;
	if (sh_suspended(&st->adapt, now)) {
		site_suspended(d, st);
		return;
	}
	if (warm_full(d, st))
		return;
	/* Idle sessions first. */
	for (struct dsess *x = st->sessions; x && st->queued; x = x->next)
		if (x->idle && !x->quitting) {
			x->idle = false;
			smtp_kick(x->s);
		}
	while (!d->draining && st->queued > 0 && st->nsess - st->nquitting <
	    site_conn_now(st) && d->nsess < d->cf->max_connections &&
	    now >= st->backoff_until) {
		/* Do not open more sessions than there are messages waiting,
		 * nor while the rate has no token to give them. */
		if (st->nsess > 0 && st->nsess >= st->queued)
			break;
		double w = sh_bucket_wait(&st->bucket, now);
		if (w > 0) {
			site_arm(d, st, w);
			break;
		}
		int h = pick_host(d, st);
		if (h < 0)
			break;
		int src = pick_source(d, &st->hosts[h].addr);
		if (src == -2) {
			/* every source address of the family is at its limit: a
			 * session ending elsewhere kicks this site again */
			site_arm(d, st, 1.0);
			break;
		}
		if (!sh_bucket_take(&st->conn_bucket, now)) {
			site_arm(d, st, sh_bucket_wait(&st->conn_bucket, now));
			break;
		}
		struct dsess *x = mem_calloc(1, sizeof *x);
		x->d = d;
		x->site = st;
		x->host = (size_t)h;
		x->src = src;
		struct smtp_params p;
		memset(&p, 0, sizeof p);
		p.addr = (const struct sockaddr *)&st->hosts[h].addr;
		p.addrlen = st->hosts[h].len;
		if (src >= 0) {
			p.source = (const struct sockaddr *)&d->src[src].addr;
			p.sourcelen = d->src[src].len;
		}
		p.mx_host = st->hosts[h].name;
		p.site = st->key;
		p.helo_name = d->cf->helo_name && *d->cf->helo_name
			? d->cf->helo_name : d->cf->hostname;
		p.tls = (enum smtp_tls_policy)st->tls;
		p.tls_ctx = d->tls;
		p.to.connect = d->cf->connect_timeout_ms / 1000.0;
		p.to.greeting = d->cf->greeting_timeout_ms / 1000.0;
		p.to.ehlo = p.to.mail = p.to.rcpt = p.to.rset = p.to.quit =
			p.to.starttls = d->cf->command_timeout_ms / 1000.0;
		p.to.data_init = d->cf->data_init_timeout_ms / 1000.0;
		p.to.data_block = d->cf->data_block_timeout_ms / 1000.0;
		p.to.data_term = d->cf->data_term_timeout_ms / 1000.0;
		p.to.idle = d->cf->idle_timeout_ms / 1000.0;
		p.max_msgs = st->max_msgs;
		p.max_reply = 4096;
		x->next = st->sessions;
		st->sessions = x;
		st->nsess++;
		d->nsess++;
		if (src >= 0)
			d->src[src].nsess++;
		x->s = smtp_open(d->loop, &p, &sess_ops, x, ++d->sess_ids);
		if (!x->s) {
			/* could not even create a socket: treat as host down */
			st->sessions = x->next;
			st->nsess--;
			d->nsess--;
			if (src >= 0)
				d->src[src].nsess--;
			st->hosts[h].down_until = now + HOST_DOWN_SECS;
			log_warn("site %s: cannot open a connection to %s: %s",
				st->key, st->hosts[h].name, strerror(errno));
			free(x);
			continue;
		}
	}
	/* Stopped by the engine-wide cap while it could use another
	 * session: wait in line for the next slot. */
	if (!d->draining && !st->slot_wait && st->queued > 0 &&
	    d->nsess >= d->cf->max_connections && now >= st->backoff_until &&
	    st->nsess - st->nquitting < site_conn_now(st) &&
	    !(st->nsess > 0 && st->nsess >= st->queued)) {
		st->slot_wait = true;
		st->slot_next = NULL;
		*d->slot_tail = st;
		d->slot_tail = &st->slot_next;
	}
	if (st->queued && now < st->backoff_until)
		site_arm(d, st, st->backoff_until - now + 0.01);
}

/* Engine-wide slots freed: the sites waiting for one, in order. A site
 * kicked either opens a session or does not wait again unless the slots
 * are all taken, so this ends. */
static void slot_kick(struct dl *d)
{
	while (d->slot_head && d->nsess < d->cf->max_connections &&
	    !d->draining) {
		struct dsite *st = d->slot_head;
		d->slot_head = st->slot_next;
		if (!d->slot_head)
			d->slot_tail = &d->slot_head;
		st->slot_wait = false;
		site_kick(d, st);
	}
}

static void site_wake_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct dsite *st = w->data;
	(void)loop;
	(void)revents;
	if (!st->d->draining)
		site_kick(st->d, st);
}

/* ---- WhatsApp ---- */

/* Claim the message durably (Q_SENDING) before sending: a crash between
 * the request and its result must not lead to a second message. */
static void wa_claim(struct dl *d, struct dmsg *m)
{
	d->wa_claimed++;
	struct cm_outcome *o = cm_outcome_new();
	o->id = m->id;
	o->due = m->due;
	o->state = Q_SENDING;
	o->attempts = m->attempts;
	o->now_ms = wall_ms();
	o->ref = m;
	cm_outcome_text(o, m->rcpt, NULL);
	cm_push(d->cm, o);
}

static void wa_done(void *arg, uint64_t id, const struct wa_result *r)
{
	struct dmsg *m = arg;
	struct dl *d = m->owner;
	(void)id;
	m->wa_req = 0;
	d->wa_claimed--;
	dl_kick(d, m->due.cid);   /* room for the next WhatsApp message */
	char extra[400] = "";
	char code[40] = "";
	if (r->code)
		snprintf(code, sizeof code, "%ld", r->code);
	switch (r->kind) {
	case WA_SENT:
		snprintf(extra, sizeof extra, "\"channel\":\"whatsapp\","
			"\"message_id\":\"%.150s\",\"wa_id\":\"%.40s\"",
			r->message_id, r->wa_id);
		outcome_ex(d, m, Q_DELIVERED, "whatsapp", NULL, (int)r->http_status,
			NULL, "sent", NULL, NULL, (double)r->ms, false, 0, false,
			extra);
		break;
	case WA_FAILED: {
		char reply[400];
		snprintf(reply, sizeof reply, "%s%s%s", code, code[0] ? " " : "",
			r->message);
		snprintf(extra, sizeof extra, "\"channel\":\"whatsapp\","
			"\"error_code\":%ld,\"error_subcode\":%ld", r->code,
			r->subcode);
		outcome_ex(d, m, Q_FAILED, "whatsapp", NULL, (int)r->http_status,
			NULL, reply, NULL, NULL, (double)r->ms, false, 0, false, extra);
		break;
	}
	case WA_CHANNEL_PAUSED:
		if (!d->wa_paused)
			log_err("whatsapp: the API refused the token (%ld %s): the "
				"channel is paused until the token file is fixed and the "
				"configuration reloaded", r->code, r->message);
		d->wa_paused = true;
		outcome_ex(d, m, Q_QUEUED, "whatsapp", NULL, (int)r->http_status,
			NULL, "channel paused: token refused", NULL, NULL,
			(double)r->ms, false, 1000, true,
			"\"channel\":\"whatsapp\"");
		break;
	default: {
		char reply[400];
		snprintf(reply, sizeof reply, "%s%s%s", code, code[0] ? " " : "",
			r->message);
		outcome_ex(d, m, Q_QUEUED, "whatsapp", NULL, (int)r->http_status,
			NULL, reply, NULL, NULL, (double)r->ms, false,
			r->retry_after_ms ? r->retry_after_ms : 60000, false,
			"\"channel\":\"whatsapp\"");
		break;
	}
	}
}

/* The claim is committed: make the request. */
static void wa_send_claimed(struct dl *d, struct dmsg *m)
{
	q_txn *t;
	char err[256];
	json_t *j = NULL;
	if (q_begin(d->q, false, &t, err, sizeof err) == 0) {
		buf_t b = BUF_INIT;
		if (q_body_read(t, d->z, m->id, &b, err, sizeof err) == 1)
			j = json_loadb(b.p, b.len, 0, NULL);
		buf_free(&b);
		q_abort(t);
	}
	if (!j) {
		d->wa_claimed--;
		outcome_ex(d, m, Q_FAILED, "whatsapp", NULL, 0, NULL,
			"stored WhatsApp message unreadable", NULL, NULL, -1, false, 0,
			false, "\"channel\":\"whatsapp\"");
		return;
	}
	const char *params[64];
	size_t np = 0, i;
	json_t *v;
	json_array_foreach(json_object_get(j, "params"), i, v)
		if (np < 64)
			params[np++] = json_string_value(v);
	struct wa_msg wm = {
		.to = json_string_value(json_object_get(j, "to")),
		.template_name = json_string_value(json_object_get(j, "template")),
		.language = json_string_value(json_object_get(j, "language")),
		.params = params, .nparams = np,
	};
	m->owner = d;
	m->wa_req = wa_send(d->wa, &wm, wa_done, m);
	json_decref(j);
	if (!m->wa_req) {
		/* The client's queue is full: put it back, try again soon. */
		d->wa_claimed--;
		d->wa_backoff_until = now_s(d) + 1;
		outcome_ex(d, m, Q_QUEUED, "whatsapp", NULL, 0, NULL,
			"client queue full", NULL, NULL, -1, false, 1000, true,
			"\"channel\":\"whatsapp\"");
	}
}

/* ---- pulling from the queue ---- */

/* A site held to a rate (or briefly suspended) needs only so many messages
 * in memory: the rest stay due in the queue, so a slow site cannot fill
 * `max_active` and starve the others. */
static bool site_has_enough(struct dl *d, const char *rcpt)
{
	const char *at = strrchr(rcpt, '@');
	char name[256];
	size_t i = 0;
	for (const char *p = at ? at + 1 : ""; *p && i < sizeof name - 1; p++)
		name[i++] = (char)tolower((unsigned char)*p);
	name[i] = 0;
	struct ddom *dom = ht_get(&d->domains, name);
	if (!dom || dom->st != D_OK || !dom->site)
		return false;
	struct dsite *st = dom->site;
	if (sh_suspended(&st->adapt, now_s(d)))
		return (double)st->queued >= SUSPEND_HOLD;
	double r = site_rate_now(st);
	if (r <= 0)
		return false;
	double enough = r * 20 > 500 ? r * 20 : 500;
	return (double)st->queued >= enough;
}

struct pull_ctx {
	struct dl *d;
	struct dcamp *c;
	q_txn *t;
	unsigned got;
	struct q_due last;
	bool any;
};

static int pull_cb(void *arg, const struct q_due *due)
{
	struct pull_ctx *x = arg;
	struct dl *d = x->d;
	uint64_t id = q_id(due->cid, due->idx);
	x->last = *due;
	x->any = true;
	if (ht_set_has(&d->inflight, id))
		return 0;
	if (due->chan == 1 && (!d->wa || d->wa_paused ||
	    now_s(d) < d->wa_backoff_until || d->wa_claimed >=
	    (d->cf->wa_max_connections ? d->cf->wa_max_connections : 16)))
		return 0;   /* stays due: channel off, paused, or at its limit */
	struct q_msg qm;
	if (q_msg_get(x->t, id, &qm) != 1 || qm.state != Q_QUEUED)
		return 0;
	if (due->chan == 1) {
		struct dmsg *m = mem_calloc(1, sizeof *m);
		m->id = id;
		m->due = *due;
		m->attempts = qm.attempts;
		m->created_ms = qm.created_ms;
		m->rcpt = mem_strdup(qm.rcpt);
		m->wa = true;
		ht_set_add(&d->inflight, id);
		d->active++;
		x->got++;
		wa_claim(d, m);
		return 0;
	}
	if (site_has_enough(d, qm.rcpt))
		return 0;   /* stays due: its rate-limited site has plenty waiting */
	struct dmsg *m = mem_calloc(1, sizeof *m);
	m->id = id;
	m->due = *due;
	m->attempts = qm.attempts;
	m->flags = qm.flags;
	m->created_ms = qm.created_ms;
	m->rcpt = mem_strdup(qm.rcpt);
	m->camp = x->c->camp;
	ht_set_add(&d->inflight, id);
	d->active++;
	x->got++;
	enqueue(d, m);
	return 0;
}

static void pull(struct dl *d)
{
	if (d->draining)
		return;
	char err[256];
	q_txn *t;
	if (d->active >= d->cf->max_active)
		return;
	if (q_begin(d->q, false, &t, err, sizeof err)) {
		log_err("delivery: %s", err);
		return;
	}
	uint64_t now = wall_ms();
	/* Transactional campaigns first, then bulk; every campaign gets a
	 * chunk per round so a small campaign is not starved by a big one. */
	for (int prio = CAMP_TRANSACTIONAL; prio <= CAMP_BULK; prio++) {
		bool progress = true;
		while (progress && d->active < d->cf->max_active) {
			progress = false;
			for (struct dcamp *c = d->camps; c; c = c->next) {
				if (c->paused || (int)c->camp->priority != prio ||
				    d->active >= d->cf->max_active)
					continue;
				struct pull_ctx x = { d, c, t, 0, { 0 }, false };
				size_t room = d->cf->max_active - d->active;
				unsigned max = room < PULL_CHUNK ? (unsigned)room
					: PULL_CHUNK;
				int n = q_due_scan(t, c->cid, c->has_cursor ? &c->cursor
					: NULL, now, max, pull_cb, &x, &c->next_due, err,
					sizeof err);
				if (n < 0) {
					log_err("delivery: campaign %u: %s", c->cid, err);
					continue;
				}
				if (x.any) {
					c->cursor = x.last;
					c->has_cursor = true;
					progress = true;
				}
			}
		}
	}
	q_abort(t);
}

static void pull_cb_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct dl *d = w->data;
	(void)loop;
	(void)revents;
	/* Every second, rescan from the start: picks up what a cursor went
	 * past (in flight then, or a WhatsApp message held back by the
	 * channel's limit or pause) and retries that came due. */
	if (w == &d->pull_timer)
		for (struct dcamp *c = d->camps; c; c = c->next)
			c->has_cursor = false;
	pull(d);
}

/* ---- public ---- */

/* The access token: the first line of token_file, never logged. */
static int read_token(const char *path, char *tok, size_t len, char *err,
	size_t errlen)
{
	FILE *f = path && *path ? fopen(path, "r") : NULL;
	if (!f) {
		snprintf(err, errlen, "[whatsapp] token_file %s: %s",
			path && *path ? path : "(not set)",
			path && *path ? strerror(errno) : "a phone_number_id needs "
			"a token_file");
		return -1;
	}
	if (!fgets(tok, (int)len, f))
		tok[0] = 0;
	fclose(f);
	tok[strcspn(tok, "\r\n")] = 0;
	if (!tok[0]) {
		snprintf(err, errlen, "[whatsapp] token_file %s is empty", path);
		return -1;
	}
	return 0;
}

static int wa_start(struct dl *d, const struct cf *cf, char *err,
	size_t errlen)
{
	char tok[4096];
	if (read_token(cf->wa_token_file, tok, sizeof tok, err, errlen) < 0)
		return -1;
	struct wa_config wc = {
		.api_url = cf->wa_api_url, .phone_number_id = cf->wa_phone_number_id,
		.token = tok, .ca_file = cf->wa_ca_file,
		.max_connections = cf->wa_max_connections,
		.timeout_ms = cf->wa_timeout_ms, .rate = cf->wa_rate,
		.ecosystem_retry_ms = cf->wa_ecosystem_retry_ms,
	};
	d->wa = wa_new(d->loop, &wc, err, errlen);
	explicit_bzero(tok, sizeof tok);
	return d->wa ? 0 : -1;
}

static void set_policy(struct dl *d, const struct cf *cf)
{
	d->pol.quiet = cf->backoff_quiet_ms / 1000.0;
	d->pol.cooldown = cf->backoff_cooldown_ms / 1000.0;
	d->pol.step_up = cf->backoff_step_up_pct / 100.0;
	d->pol.floor = cf->backoff_floor_pct / 100.0;
}

static void set_source_rates(struct dl *d, const struct cf *cf)
{
	for (size_t i = 0; i < d->nsrc; i++)
		sh_bucket_set(&d->src[i].bucket, cf->source_rate,
			sh_default_burst(cf->source_rate), now_s(d));
}

static int make_sources(struct dl *d, const struct cf *cf, char *err,
	size_t errlen)
{
	d->src = mem_calloc(cf->nsources ? cf->nsources : 1, sizeof *d->src);
	for (size_t i = 0; i < cf->nsources; i++) {
		struct dsource *x = &d->src[i];
		struct sockaddr_in *a4 = (struct sockaddr_in *)&x->addr;
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&x->addr;
		snprintf(x->name, sizeof x->name, "%s", cf->sources[i]);
		if (inet_pton(AF_INET, cf->sources[i], &a4->sin_addr) == 1) {
			a4->sin_family = AF_INET;
			x->len = sizeof *a4;
		} else if (inet_pton(AF_INET6, cf->sources[i], &a6->sin6_addr) == 1) {
			a6->sin6_family = AF_INET6;
			x->len = sizeof *a6;
		} else {
			snprintf(err, errlen, "[smtp] source: \"%s\" is not an IP "
				"address", cf->sources[i]);
			return -1;
		}
		sh_bucket_init(&x->bucket, cf->source_rate,
			sh_default_burst(cf->source_rate), now_s(d));
	}
	d->nsrc = cf->nsources;
	return 0;
}

dl *dl_new(struct ev_loop *loop, const struct cf *cf, q_env *q, cm *c,
	evlog *ev, const struct rd_env *env, char *err, size_t errlen)
{
	struct dl *d = mem_calloc(1, sizeof *d);
	d->loop = loop;
	d->cf = cf;
	d->q = q;
	d->cm = c;
	d->ev = ev;
	d->env = *env;
	d->slot_tail = &d->slot_head;
	d->z = q_zctx_new();
	set_policy(d, cf);
	if (make_sources(d, cf, err, errlen) < 0) {
		q_zctx_free(d->z);
		free(d->src);
		free(d);
		return NULL;
	}
	struct dns_config dc;
	memset(&dc, 0, sizeof dc);
	dc.servers = cf->dns_servers && *cf->dns_servers ? cf->dns_servers
		: NULL;
	dc.timeout = cf->dns_timeout_ms / 1000.0;
	dc.tries = cf->dns_tries;
	if (!(d->dns = dns_new(loop, &dc, err, errlen))) {
		q_zctx_free(d->z);
		free(d->src);
		free(d);
		return NULL;
	}
	struct tls_client_config tc;
	memset(&tc, 0, sizeof tc);
	tc.ca_file = cf->ca_file && *cf->ca_file ? cf->ca_file : NULL;
	if (!(d->tls = tls_client_new(&tc, err, errlen))) {
		dns_free(d->dns);
		q_zctx_free(d->z);
		free(d->src);
		free(d);
		return NULL;
	}
	if (cf->wa_phone_number_id && *cf->wa_phone_number_id &&
	    wa_start(d, cf, err, errlen) < 0) {
		tls_client_free(d->tls);
		dns_free(d->dns);
		q_zctx_free(d->z);
		free(d->src);
		free(d);
		return NULL;
	}
	srand48((long)wall_ms());
	ev_timer_init(&d->pull_timer, pull_cb_timer, 1.0, 1.0);
	d->pull_timer.data = d;
	ev_timer_start(loop, &d->pull_timer);
	ev_unref(loop);
	ev_timer_init(&d->soon, pull_cb_timer, 0.0, 0.0);
	d->soon.data = d;
	return d;
}

void dl_campaign(dl *d, struct camp *c, bool paused)
{
	struct dcamp *x = mem_calloc(1, sizeof *x);
	x->cid = c->cid;
	x->camp = camp_ref(c);
	x->paused = paused;
	x->next_due = 0;
	/* keep id order: older campaigns first within a priority */
	struct dcamp **pp = &d->camps;
	while (*pp)
		pp = &(*pp)->next;
	*pp = x;
	ev_timer_start(d->loop, &d->soon);
}

/* Forget the messages of cid that wait in memory for a session: they stay
 * due in the queue (pause) or are about to be cancelled there. */
static void drop_waiting(struct dl *d, uint32_t cid)
{
	size_t pos = 0;
	const char *k;
	void *v;
	while (ht_next(&d->domains, &pos, &k, &v)) {
		struct ddom *dom = v;
		size_t before = dom->nq;
		struct dmsg *m = dom_take(dom, cid);
		size_t dropped = before - dom->nq;
		while (m) {
			struct dmsg *next = m->next;
			ht_set_del(&d->inflight, m->id);
			d->active--;
			dmsg_free(m);
			m = next;
		}
		if (dom->in_ring && dom->site)
			dom->site->queued -= dropped;
	}
}

void dl_pause(dl *d, uint32_t cid, bool paused)
{
	if (paused)
		drop_waiting(d, cid);
	for (struct dcamp *c = d->camps; c; c = c->next)
		if (c->cid == cid) {
			c->paused = paused;
			c->has_cursor = false;
		}
	if (!paused)
		ev_timer_start(d->loop, &d->soon);
}

void dl_forget(dl *d, uint32_t cid)
{
	drop_waiting(d, cid);
	for (struct dcamp **pp = &d->camps; *pp; pp = &(*pp)->next)
		if ((*pp)->cid == cid) {
			struct dcamp *c = *pp;
			*pp = c->next;
			camp_unref(c->camp);
			free(c);
			return;
		}
}

void dl_kick(dl *d, uint32_t cid)
{
	for (struct dcamp *c = d->camps; c; c = c->next)
		if (cid == 0 || c->cid == cid)
			c->has_cursor = false;
	if (!d->draining)
		ev_timer_start(d->loop, &d->soon);
}

void dl_drain(dl *d)
{
	d->draining = true;
	ev_timer_stop(d->loop, &d->soon);
	/* Messages waiting for a session are simply forgotten: they are
	 * still due in the queue and are sent after the restart. */
	size_t pos = 0;
	const char *k;
	void *v;
	while (ht_next(&d->sites, &pos, &k, &v)) {
		struct dsite *st = v;
		struct dmsg *m;
		while ((m = site_pop(st))) {
			ht_set_del(&d->inflight, m->id);
			d->active--;
			dmsg_free(m);
		}
		for (struct dsess *x = st->sessions; x; x = x->next)
			if (x->idle)
				smtp_close(x->s);
	}
	pos = 0;
	while (ht_next(&d->domains, &pos, &k, &v)) {
		struct ddom *dom = v;
		struct dmsg *m = dom_take(dom, 0);
		while (m) {
			struct dmsg *next = m->next;
			ht_set_del(&d->inflight, m->id);
			d->active--;
			dmsg_free(m);
			m = next;
		}
		if (dom->dns_req) {
			dns_cancel(d->dns, dom->dns_req);
			dom->dns_req = 0;
			dom->st = D_NEW;
		}
	}
}

bool dl_idle(const dl *d)
{
	return d->active == 0 && d->nsess == 0;
}

json_t *dl_status(dl *d, bool sites)
{
	/* Where the messages in flight are: waiting for an MX answer, in a
	 * site's queue, in a session or being committed. */
	size_t pos0 = 0, resolving = 0, in_domains = 0, in_sites = 0;
	const char *k0;
	void *v0;
	while (ht_next(&d->domains, &pos0, &k0, &v0)) {
		struct ddom *dom = v0;
		in_domains += dom->nq;
		if (dom->st == D_RESOLVING || dom->st == D_NEW)
			resolving += dom->nq;
	}
	pos0 = 0;
	while (ht_next(&d->sites, &pos0, &k0, &v0))
		in_sites += ((struct dsite *)v0)->queued;
	json_t *j = json_pack("{sIsIsIs{sIsIsI}}", "inflight",
		(json_int_t)d->active, "connections", (json_int_t)d->nsess,
		"domains", (json_int_t)d->domains.len, "waiting",
		"dns", (json_int_t)resolving, "sites", (json_int_t)in_sites,
		"domains", (json_int_t)in_domains);
	struct dns_stats ds;
	dns_get_stats(d->dns, &ds);
	json_object_set_new(j, "dns", json_pack("{sIsIsIsIsI}", "queries",
		(json_int_t)ds.queries, "cache_hits", (json_int_t)ds.cache_hits,
		"coalesced", (json_int_t)ds.coalesced, "address_queries",
		(json_int_t)ds.addr_queries, "address_cache_hits",
		(json_int_t)ds.addr_cache_hits));
	struct tls_stats ts;
	tls_client_stats(d->tls, &ts);
	json_object_set_new(j, "tls", json_pack("{sIsIsI}", "full",
		(json_int_t)ts.full, "resumed", (json_int_t)ts.resumed, "failed",
		(json_int_t)ts.failed));
	if (d->wa) {
		struct wa_stats ws;
		wa_get_stats(d->wa, &ws);
		json_object_set_new(j, "whatsapp", json_pack(
			"{sssIsIsIsIsIsI}", "state", d->wa_paused ? "paused: the API "
			"refused the token (fix token_file, then config reload)"
			: "active", "sent", (json_int_t)ws.sent, "failed",
			(json_int_t)ws.failed, "retried", (json_int_t)ws.retried,
			"connections", (json_int_t)ws.connects, "queued",
			(json_int_t)ws.queued, "in_flight", (json_int_t)ws.in_flight));
	}
	if (!sites)
		return j;
	json_t *arr = json_array();
	size_t pos = 0;
	const char *k;
	void *v;
	while (ht_next(&d->sites, &pos, &k, &v)) {
		struct dsite *st = v;
		json_t *doms = json_array();
		size_t p2 = 0;
		const char *dk;
		void *dv;
		while (ht_next(&d->domains, &p2, &dk, &dv) &&
		    json_array_size(doms) < 20)
			if (((struct ddom *)dv)->site == st)
				json_array_append_new(doms, json_string(dk));
		double now = now_s(d);
		char state[400];
		if (sh_suspended(&st->adapt, now))
			snprintf(state, sizeof state, "suspended for %.0f s: %s",
				st->adapt.suspended_until - now, st->last_reply);
		else if (now < st->backoff_until)
			snprintf(state, sizeof state, "backoff: no MX host reachable");
		else if (st->nwarm && warm_cap(d, st) != UINT32_MAX &&
		    st->warm_count >= warm_cap(d, st))
			snprintf(state, sizeof state, "warm-up cap reached");
		else if (st->adapt.factor < 1)
			snprintf(state, sizeof state, "throttled: %s", st->last_reply);
		else
			snprintf(state, sizeof state, "active");
		buf_t rate = BUF_INIT, rcfg = BUF_INIT;
		cf_format_rate(site_rate_now(st), &rate);
		cf_format_rate(st->rate_cfg, &rcfg);
		json_t *o = json_pack("{sssosIsIsIsIsIsssssfsfsIsIss}", "site",
			st->key, "domains", doms, "connections",
			(json_int_t)st->nsess, "max_connections",
			(json_int_t)site_conn_now(st), "configured_connections",
			(json_int_t)st->max_conn, "queued", (json_int_t)st->queued,
			"hosts", (json_int_t)st->nhosts, "rate", buf_cstr(&rate),
			"configured_rate", buf_cstr(&rcfg), "factor", st->adapt.factor,
			"observed_rate", st->obs_rate, "sent", (json_int_t)st->sent,
			"throttling_replies", (json_int_t)st->adapt.matches,
			"state", state);
		buf_free(&rate);
		buf_free(&rcfg);
		if (st->nwarm) {
			uint32_t cap = warm_cap(d, st);
			json_object_set_new(o, "warmup", json_pack("{sIsIsI}", "day",
				(json_int_t)(st->warm_day - st->warm_first + 1), "cap",
				cap == UINT32_MAX ? (json_int_t)-1 : (json_int_t)cap,
				"sent_today", (json_int_t)st->warm_count));
		}
		json_array_append_new(arr, o);
	}
	if (d->nsrc) {
		json_t *srcs = json_array();
		for (size_t i = 0; i < d->nsrc; i++)
			json_array_append_new(srcs, json_pack("{sssIsI}", "address",
				d->src[i].name, "connections",
				(json_int_t)d->src[i].nsess, "sent",
				(json_int_t)d->src[i].sent));
		json_object_set_new(j, "sources", srcs);
	}
	json_object_set_new(j, "sites", arr);
	return j;
}

void dl_reconfigure(dl *d, const struct cf *cf)
{
	d->cf = cf;
	if (d->wa) {
		/* A new token ends a pause (token refused by the API). */
		char tok[4096], err[300];
		if (read_token(cf->wa_token_file, tok, sizeof tok, err,
		    sizeof err) < 0 || wa_set_token(d->wa, tok, err,
		    sizeof err) < 0) {
			log_err("reload: %s", err);
		} else if (d->wa_paused) {
			log_info("whatsapp: new token, the channel resumes");
			d->wa_paused = false;
			dl_kick(d, 0);
		}
		explicit_bzero(tok, sizeof tok);
	}
	set_policy(d, cf);
	bool same = cf->nsources == d->nsrc;
	for (size_t i = 0; same && i < d->nsrc; i++)
		same = strcmp(cf->sources[i], d->src[i].name) == 0;
	if (!same)
		log_warn("reload: [smtp] source changes apply after a restart");
	set_source_rates(d, cf);
	size_t pos = 0;
	const char *k;
	void *v;
	while (ht_next(&d->sites, &pos, &k, &v)) {
		site_limits(d, v, ((struct dsite *)v)->domain);
		site_kick(d, v);
	}
	ev_timer_start(d->loop, &d->soon);
}

void dl_free(dl *d)
{
	if (!d)
		return;
	dl_drain(d);
	size_t pos = 0;
	const char *k;
	void *v;
	/* Sessions still open are aborted; their messages stay due. */
	while (ht_next(&d->sites, &pos, &k, &v)) {
		struct dsite *st = v;
		while (st->sessions) {
			struct dsess *x = st->sessions;
			smtp_close(x->s);
			if (st->sessions == x)
				break;   /* ended() runs later; cannot wait here */
		}
	}
	ev_ref(d->loop);
	ev_timer_stop(d->loop, &d->pull_timer);
	ev_timer_stop(d->loop, &d->soon);
	pos = 0;
	while (ht_next(&d->domains, &pos, &k, &v)) {
		struct ddom *dom = v;
		free(dom->q);
		free(dom->name);
		free(dom);
	}
	ht_free(&d->domains);
	pos = 0;
	while (ht_next(&d->sites, &pos, &k, &v)) {
		struct dsite *st = v;
		ev_timer_stop(d->loop, &st->wake);
		free(st->domain);
		free(st->key);
		free(st->hosts);
		free(st);
	}
	ht_free(&d->sites);
	while (d->camps) {
		struct dcamp *c = d->camps->next;
		camp_unref(d->camps->camp);
		free(d->camps);
		d->camps = c;
	}
	ht_set_free(&d->inflight);
	q_zctx_free(d->z);
	free(d->src);
	wa_free(d->wa);
	dns_free(d->dns);
	tls_client_free(d->tls);
	free(d);
}
