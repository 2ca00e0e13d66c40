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
#include "engine/smtp.h"
#include "engine/tls.h"

#define PULL_CHUNK 512
#define HOST_DOWN_SECS 60.0
#define TEMPFAIL_CACHE_SECS 30.0

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
	char sender[Q_RCPT_MAX + 1];
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

struct ddom {
	char *name;
	enum dom_state st;
	uint64_t dns_req;
	double expires;
	struct dsite *site;
	bool err_permanent;
	char err[256];
	struct dmsg *head, **tail;
	size_t nq;
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
	unsigned max_conn;
	unsigned max_msgs;
	int tls;                    /* enum cf_tls */
	struct dsess *sessions;
	unsigned ndomains;
	double backoff_until;
};

struct dsess {
	struct dl *d;
	struct dsite *site;
	struct smtp_session *s;
	size_t host;
	bool idle;
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
	ev_timer site_timer;        /* backoffs ending */
};

static void pull(struct dl *d);
static void site_kick(struct dl *d, struct dsite *st);

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

static void dmsg_free(struct dmsg *m)
{
	free(m->rcpt);
	free(m->body);
	free(m);
}

/*
 * Record what happened to `m`: kind is Q_DELIVERED, Q_BOUNCED or Q_QUEUED
 * (deferred). The message stays in flight until the commit comes back.
 */
static void outcome(struct dl *d, struct dmsg *m, uint8_t kind,
	const char *site, const char *mx, int code, const char *enhanced,
	const char *reply, const char *category, const char *tls, double ms,
	bool suppress)
{
	struct cm_outcome *o = cm_outcome_new();
	uint64_t now = wall_ms();
	o->id = m->id;
	o->due = m->due;
	o->attempts = (uint16_t)(m->attempts + 1);
	o->now_ms = now;
	o->ref = m;
	snprintf(o->rcpt, sizeof o->rcpt, "%s", m->rcpt);
	snprintf(o->reply, sizeof o->reply, "%s", reply ? reply : "");
	const char *event;
	if (kind == Q_QUEUED) {
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
	} else {
		event = kind == Q_DELIVERED ? "delivered" : "bounced";
	}
	o->state = kind;
	o->suppress = suppress && kind == Q_BOUNCED;
	struct evlog_event ev = {
		.event = event, .campaign = m->due.cid, .msg = m->id,
		.rcpt = m->rcpt, .site = site, .mx = mx, .code = code,
		.enhanced = enhanced, .reply = reply, .category = category,
		.tls = tls, .attempt = o->attempts, .ms = ms,
	};
	evlog_format(&o->event, wall_s(), &ev);
	cm_push(d->cm, o);
}

void dl_committed(dl *d, struct cm_outcome *list)
{
	while (list) {
		struct cm_outcome *n = list->next;
		struct dmsg *m = list->ref;
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

/* Next message of the site, round-robin over its domains. */
static struct dmsg *site_pop(struct dsite *st)
{
	while (st->ring) {
		struct ddom *dom = st->ring->ring_next;
		struct dmsg *m = dom->head;
		if (m) {
			dom->head = m->next;
			if (!dom->head)
				dom->tail = &dom->head;
			dom->nq--;
			st->queued--;
			st->ring = dom;          /* advance */
			m->next = NULL;
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

static void site_limits(struct dl *d, struct dsite *st, const char *domain)
{
	const struct cf *cf = d->cf;
	st->max_conn = cf->site_max_connections;
	st->max_msgs = cf->max_messages_per_connection;
	st->tls = cf->tls;
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
	}
}

static struct dsite *site_get(struct dl *d, const char *key,
	const char *domain)
{
	struct dsite *st = ht_get(&d->sites, key);
	if (st)
		return st;
	st = mem_calloc(1, sizeof *st);
	st->key = mem_strdup(key);
	site_limits(d, st, domain);
	ht_put(&d->sites, key, st);
	return st;
}

static void defer_all(struct dl *d, struct ddom *dom, bool permanent,
	const char *why, const char *category)
{
	struct dmsg *m;
	while ((m = dom->head)) {
		dom->head = m->next;
		dom->nq--;
		if (dom->site && dom->in_ring)
			dom->site->queued--;
		outcome(d, m, permanent ? Q_BOUNCED : Q_QUEUED, NULL, NULL, 0, NULL,
			why, permanent ? category : NULL, NULL, -1, false);
	}
	dom->tail = &dom->head;
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

static void dom_ready(struct dl *d, struct ddom *dom)
{
	struct dsite *st = dom->site;
	if (!dom->head)
		return;
	size_t n = 0;
	for (struct dmsg *m = dom->head; m; m = m->next)
		n++;
	if (!dom->in_ring) {
		ring_add(st, dom);
		st->queued += n;
	}
	site_kick(d, st);
}

static void dns_done(void *arg, const struct dns_result *r)
{
	struct ddom *dom = arg;
	struct dl *d = NULL;
	/* The domain object carries no back-pointer to dl: find it through
	 * the first queued message's campaign is not possible either, so the
	 * resolver's user data is the domain and dl is reached via the site
	 * table's owner recorded at creation. */
	d = dom->site ? NULL : NULL;
	(void)d;
	(void)r;
}
