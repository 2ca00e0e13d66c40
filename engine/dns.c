/*
 * dns — see dns.h.
 *
 * One c-ares channel per resolver. Its sockets are watched with one ev_io
 * each (created and updated by the sock-state callback) and its timeouts
 * with one ev_timer that follows ares_timeout(). A lookup of a domain is a
 * `job`: the MX query, then one ares_getaddrinfo() per MX host (or for the
 * domain itself: implicit MX). Waiters (dns_lookup callers) hang on the job;
 * the finished result goes to the cache and to every waiter not cancelled.
 */
#include "engine/dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <arpa/nameser.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/htab.h"
#include "engine/log.h"
#include "engine/mem.h"

#define MX_MAX 16

struct waiter {
	uint64_t id;
	dns_cb cb;
	void *arg;
	bool cancelled;
	struct waiter *next;
};

struct job;

struct hostq {               /* a job waiting for one MX host's addresses */
	struct job *job;
	size_t idx;
	struct hostq *next;
};

/* The addresses of one MX host, shared by every domain that names it:
 * a thousand domains hosted on the same two MX hosts cost two address
 * lookups, not two thousand. Kept for the smallest address TTL. */
struct hostaddr {
	struct sockaddr_storage *addrs;
	size_t naddrs;
	int status;              /* ARES_SUCCESS or why the lookup failed */
	unsigned ttl;            /* smallest address TTL, 0 = none given */
	double expires;
	bool busy;               /* a lookup is in flight */
	bool handing;            /* its answer is being handed to the jobs */
	struct hostq *waiters;
	dns_resolver *r;
};

struct job {
	dns_resolver *r;
	struct job *next_pending;
	char *domain;
	struct waiter *waiters;
	struct dns_result res;
	unsigned ttl;
	size_t pending;          /* address lookups outstanding */
	bool implicit;
	int addr_fail;           /* worst getaddrinfo status */
	struct hostq hq[MX_MAX];
};

struct cached {
	struct dns_result res;
	double expires;
};

struct fdw {
	ev_io io;
	dns_resolver *r;
	struct fdw *next;
};

struct dns_resolver {
	struct ev_loop *loop;
	ares_channel ch;
	ev_timer timer;
	struct fdw *fds;
	struct dns_config c;
	ht_map jobs;             /* domain → job in progress */
	ht_map cache;            /* domain → struct cached */
	ht_map hosts;            /* MX host name → struct hostaddr */
	uint64_t next_id;
	struct dns_stats st;
	/* At most JOBS_MAX domains are being resolved at once: a burst of a
	 * thousand new domains would otherwise put thousands of UDP answers
	 * at once on one socket, and the ones the kernel drops become
	 * timeouts. The others wait here, in order. */
	unsigned active;
	struct job *pending, **pending_tail;
};

#define JOBS_MAX 64

static void start_pending(dns_resolver *r);

static double now(dns_resolver *r)
{
	return r->c.now ? r->c.now(r->c.arg) : ev_now(r->loop);
}

static unsigned rnd(dns_resolver *r)
{
	return r->c.rand ? r->c.rand(r->c.arg) : (unsigned)random();
}

const char *dns_status_name(enum dns_status s)
{
	static const char *const n[] = { "ok", "nxdomain", "null_mx", "no_host",
		"tempfail" };
	return (unsigned)s < sizeof n / sizeof *n ? n[s] : "?";
}

bool dns_permanent(const struct dns_result *r)
{
	return r->status == DNS_NXDOMAIN || r->status == DNS_NULLMX;
}

/* ---- c-ares on libev ---- */

static void arm_timer(dns_resolver *r)
{
	struct timeval tv, *tp = ares_timeout(r->ch, NULL, &tv);
	ev_timer_stop(r->loop, &r->timer);
	if (tp) {
		ev_timer_set(&r->timer, (double)tp->tv_sec + tp->tv_usec / 1e6 +
			0.001, 0);
		ev_timer_start(r->loop, &r->timer);
	}
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct fdw *f = (struct fdw *)w;
	dns_resolver *r = f->r;
	(void)loop;
	ares_process_fd(r->ch, revents & EV_READ ? w->fd : ARES_SOCKET_BAD,
		revents & EV_WRITE ? w->fd : ARES_SOCKET_BAD);
	arm_timer(r);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	dns_resolver *r = w->data;
	(void)loop;
	(void)revents;
	ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	arm_timer(r);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable,
	int writable)
{
	dns_resolver *r = data;
	struct fdw **pp, *f = NULL;
	for (pp = &r->fds; *pp; pp = &(*pp)->next)
		if ((*pp)->io.fd == fd) {
			f = *pp;
			break;
		}
	if (!readable && !writable) {
		if (f) {
			ev_io_stop(r->loop, &f->io);
			*pp = f->next;
			free(f);
		}
		return;
	}
	if (!f) {
		f = mem_calloc(1, sizeof *f);
		f->r = r;
		f->next = r->fds;
		r->fds = f;
		ev_io_init(&f->io, io_cb, fd, 0);
	}
	ev_io_stop(r->loop, &f->io);
	ev_io_set(&f->io, fd, (readable ? EV_READ : 0) |
		(writable ? EV_WRITE : 0));
	ev_io_start(r->loop, &f->io);
}

dns_resolver *dns_new(struct ev_loop *loop, const struct dns_config *c,
	char *err, size_t errlen)
{
	dns_resolver *r = mem_calloc(1, sizeof *r);
	struct ares_options o;
	memset(&o, 0, sizeof o);
	r->loop = loop;
	r->c = *c;
	if (!r->c.timeout)
		r->c.timeout = 5;
	if (!r->c.tries)
		r->c.tries = 3;
	if (!r->c.cache_max)
		r->c.cache_max = 100000;
	if (!r->c.tempfail_ttl)
		r->c.tempfail_ttl = 30;
	int rc = ares_library_init(ARES_LIB_INIT_ALL);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "dns: %s", ares_strerror(rc));
		free(r);
		return NULL;
	}
	o.sock_state_cb = sock_state_cb;
	o.sock_state_cb_data = r;
	o.timeout = (int)(r->c.timeout * 1000);
	o.tries = (int)r->c.tries;
	o.lookups = (char *)"fb";
	rc = ares_init_options(&r->ch, &o, ARES_OPT_SOCK_STATE_CB |
		ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "dns: %s", ares_strerror(rc));
		ares_library_cleanup();
		free(r);
		return NULL;
	}
	if (c->servers && *c->servers &&
	    (rc = ares_set_servers_ports_csv(r->ch, c->servers)) != ARES_SUCCESS) {
		snprintf(err, errlen, "dns: [dns] servers \"%s\": %s", c->servers,
			ares_strerror(rc));
		ares_destroy(r->ch);
		ares_library_cleanup();
		free(r);
		return NULL;
	}
	ev_timer_init(&r->timer, timer_cb, 1, 0);
	r->timer.data = r;
	r->pending_tail = &r->pending;
	return r;
}

static void free_result(struct dns_result *res)
{
	for (size_t i = 0; i < res->nhosts; i++) {
		free(res->hosts[i].name);
		free(res->hosts[i].addrs);
	}
	free(res->hosts);
	free((char *)res->message);
	memset(res, 0, sizeof *res);
}

static void job_free(struct job *j)
{
	while (j->waiters) {
		struct waiter *w = j->waiters->next;
		free(j->waiters);
		j->waiters = w;
	}
	free_result(&j->res);
	free(j->domain);
	free(j);
}

void dns_free(dns_resolver *r)
{
	if (!r)
		return;
	/* Destroying the channel runs the callbacks with ARES_EDESTRUCTION;
	 * they only free. */
	ares_destroy(r->ch);
	ares_library_cleanup();
	ev_timer_stop(r->loop, &r->timer);
	while (r->fds) {
		struct fdw *f = r->fds->next;
		ev_io_stop(r->loop, &r->fds->io);
		free(r->fds);
		r->fds = f;
	}
	size_t pos = 0;
	const char *k;
	void *v;
	while (ht_next(&r->jobs, &pos, &k, &v))
		job_free(v);
	ht_free(&r->jobs);
	pos = 0;
	while (ht_next(&r->cache, &pos, &k, &v)) {
		free_result(&((struct cached *)v)->res);
		free(v);
	}
	ht_free(&r->cache);
	pos = 0;
	while (ht_next(&r->hosts, &pos, &k, &v)) {
		free(((struct hostaddr *)v)->addrs);
		free(v);
	}
	ht_free(&r->hosts);
	free(r);
}

/* ---- results ---- */

static void copy_result(struct dns_result *dst, const struct dns_result *src)
{
	*dst = *src;
	dst->message = src->message ? mem_strdup(src->message) : NULL;
	dst->hosts = src->nhosts ? mem_calloc(src->nhosts, sizeof *dst->hosts)
		: NULL;
	for (size_t i = 0; i < src->nhosts; i++) {
		dst->hosts[i].name = mem_strdup(src->hosts[i].name);
		dst->hosts[i].pref = src->hosts[i].pref;
		dst->hosts[i].naddrs = src->hosts[i].naddrs;
		dst->hosts[i].addrs = mem_memdup(src->hosts[i].addrs,
			src->hosts[i].naddrs * sizeof *src->hosts[i].addrs);
	}
}

static void cache_put(dns_resolver *r, const char *domain,
	const struct dns_result *res)
{
	if (r->cache.len >= r->c.cache_max) {
		/* Make room: drop what expired; if nothing did, start over. */
		size_t pos = 0;
		const char *k;
		void *v;
		double t = now(r);
		bool dropped = false;
		while (ht_next(&r->cache, &pos, &k, &v))
			if (((struct cached *)v)->expires <= t) {
				free_result(&((struct cached *)v)->res);
				free(ht_del(&r->cache, k));
				dropped = true;
			}
		if (!dropped) {
			pos = 0;
			while (ht_next(&r->cache, &pos, &k, &v)) {
				free_result(&((struct cached *)v)->res);
				free(v);
			}
			ht_free(&r->cache);
		}
	}
	struct cached *c = ht_get(&r->cache, domain);
	if (c) {
		free_result(&c->res);
	} else {
		c = mem_calloc(1, sizeof *c);
		ht_put(&r->cache, domain, c);
	}
	copy_result(&c->res, res);
	c->expires = now(r) + res->ttl;
}

static void finish(struct job *j)
{
	dns_resolver *r = j->r;
	if (j->res.status == DNS_OK) {
		j->res.ttl = j->ttl ? j->ttl : 60;
	} else if (j->res.status == DNS_NXDOMAIN || j->res.status == DNS_NULLMX) {
		if (!j->res.ttl)
			j->res.ttl = 300;
	} else {
		j->res.ttl = (unsigned)r->c.tempfail_ttl;
	}
	ht_del(&r->jobs, j->domain);
	r->active--;
	cache_put(r, j->domain, &j->res);
	for (struct waiter *w = j->waiters; w; w = w->next)
		if (!w->cancelled)
			w->cb(w->arg, &j->res);
	job_free(j);
	start_pending(r);
}

static void set_msg(struct job *j, enum dns_status st, const char *fmt,
	const char *a)
{
	char m[300];
	snprintf(m, sizeof m, fmt, a);
	j->res.status = st;
	free((char *)j->res.message);
	j->res.message = mem_strdup(m);
}

/* Order: preference ascending, equal preferences shuffled. */
static void order_hosts(dns_resolver *r, struct dns_host *h, size_t n)
{
	for (size_t i = 1; i < n; i++)
		for (size_t k = i; k > 0 && h[k - 1].pref > h[k].pref; k--) {
			struct dns_host t = h[k];
			h[k] = h[k - 1];
			h[k - 1] = t;
		}
	for (size_t s = 0; s < n;) {
		size_t e = s;
		while (e < n && h[e].pref == h[s].pref)
			e++;
		for (size_t i = e - 1; i > s; i--) {
			size_t k = s + rnd(r) % (i - s + 1);
			struct dns_host t = h[i];
			h[i] = h[k];
			h[k] = t;
		}
		s = e;
	}
}

static void addrs_done(struct job *j)
{
	/* Keep the hosts that resolved, in order. */
	size_t k = 0;
	for (size_t i = 0; i < j->res.nhosts; i++) {
		if (j->res.hosts[i].naddrs) {
			j->res.hosts[k++] = j->res.hosts[i];
		} else {
			free(j->res.hosts[i].name);
			free(j->res.hosts[i].addrs);
		}
	}
	j->res.nhosts = k;
	if (k) {
		j->res.status = DNS_OK;
		order_hosts(j->r, j->res.hosts, k);
	} else if (j->implicit && j->addr_fail == ARES_ENOTFOUND) {
		set_msg(j, DNS_NXDOMAIN, "%s: no such domain", j->domain);
	} else if (j->implicit && j->addr_fail == ARES_ENODATA) {
		set_msg(j, DNS_NOHOST, "%s: no MX and no address records",
			j->domain);
	} else {
		set_msg(j, j->addr_fail == ARES_ENOTFOUND ||
			j->addr_fail == ARES_ENODATA ? DNS_NOHOST : DNS_TEMPFAIL,
			"%s: the MX hosts have no usable address", j->domain);
	}
	finish(j);
}

/* One waiting job gets a host's addresses (or its failure). */
static void host_fill(struct job *j, size_t idx, const struct hostaddr *ha)
{
	struct dns_host *h = &j->res.hosts[idx];
	if (ha->status == ARES_SUCCESS && ha->naddrs) {
		h->addrs = mem_memdup(ha->addrs, ha->naddrs * sizeof *ha->addrs);
		h->naddrs = ha->naddrs;
		if (ha->ttl) {
			double left = ha->expires - now(j->r);
			unsigned t = left < 1 ? 1 : (unsigned)left;
			if (!j->ttl || t < j->ttl)
				j->ttl = t;
		}
	} else if (!j->addr_fail || ha->status != ARES_ENOTFOUND) {
		j->addr_fail = ha->status == ARES_SUCCESS ? ARES_ENODATA :
			ha->status;
	}
	if (--j->pending == 0)
		addrs_done(j);
}

static void addr_cb(void *arg, int status, int timeouts,
	struct ares_addrinfo *ai)
{
	struct hostaddr *ha = arg;
	(void)timeouts;
	if (status == ARES_EDESTRUCTION) {
		ares_freeaddrinfo(ai);
		return;
	}
	dns_resolver *r = ha->r;
	free(ha->addrs);
	ha->addrs = NULL;
	ha->naddrs = 0;
	ha->ttl = 0;
	ha->status = status;
	if (status == ARES_SUCCESS && ai) {
		size_t n = 0;
		for (struct ares_addrinfo_node *x = ai->nodes; x; x = x->ai_next)
			n++;
		ha->addrs = mem_calloc(n ? n : 1, sizeof *ha->addrs);
		/* IPv6 first, then IPv4, as most MTAs do. */
		for (int pass = 0; pass < 2; pass++)
			for (struct ares_addrinfo_node *x = ai->nodes; x;
			    x = x->ai_next) {
				if ((x->ai_family == AF_INET6) != (pass == 0))
					continue;
				if (x->ai_addrlen > sizeof *ha->addrs)
					continue;
				memcpy(&ha->addrs[ha->naddrs++], x->ai_addr,
					x->ai_addrlen);
				if (x->ai_ttl > 0 && (!ha->ttl ||
				    (unsigned)x->ai_ttl < ha->ttl))
					ha->ttl = (unsigned)x->ai_ttl;
			}
	}
	ares_freeaddrinfo(ai);
	ha->expires = now(r) + (status != ARES_SUCCESS ? r->c.tempfail_ttl :
		ha->ttl ? ha->ttl : 60);
	/* Hand the answer to the waiting jobs. Each may end (and free its
	 * job, hence its hostq) and start others, which may look this host
	 * up again: detach the list first. */
	struct hostq *q = ha->waiters;
	ha->waiters = NULL;
	ha->busy = false;
	ha->handing = true;
	while (q) {
		struct hostq *next = q->next;
		host_fill(q->job, q->idx, ha);
		q = next;
	}
	ha->handing = false;
}

/* Room in the host cache: drop what expired; if nothing did, everything
 * not being looked up. */
static void hosts_trim(dns_resolver *r)
{
	if (r->hosts.len < r->c.cache_max)
		return;
	double t = now(r);
	for (int pass = 0; pass < 2; pass++) {
		size_t pos = 0, dropped = 0;
		const char *k;
		void *v;
		while (ht_next(&r->hosts, &pos, &k, &v)) {
			struct hostaddr *ha = v;
			if (ha->busy || ha->handing ||
			    (pass == 0 && ha->expires > t))
				continue;
			free(ha->addrs);
			free(ht_del(&r->hosts, k));
			dropped++;
		}
		if (dropped)
			return;
	}
}

static void resolve_hosts(struct job *j)
{
	dns_resolver *r = j->r;
	struct ares_addrinfo_hints hints;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	size_t n = j->res.nhosts;
	/* One more than the hosts: cached answers are handed over at once,
	 * and the job must not end inside this loop. */
	j->pending = n + 1;
	for (size_t i = 0; i < n; i++) {
		const char *name = j->res.hosts[i].name;
		struct hostaddr *ha = ht_get(&r->hosts, name);
		if (ha && !ha->busy && ha->expires > now(r)) {
			r->st.addr_cache_hits++;
			host_fill(j, i, ha);
			continue;
		}
		j->hq[i].job = j;
		j->hq[i].idx = i;
		if (ha && ha->busy) {
			r->st.addr_cache_hits++;
			j->hq[i].next = ha->waiters;
			ha->waiters = &j->hq[i];
			continue;
		}
		if (!ha) {
			hosts_trim(r);
			ha = mem_calloc(1, sizeof *ha);
			ha->r = r;
			ht_put(&r->hosts, name, ha);
		}
		ha->busy = true;
		j->hq[i].next = NULL;
		ha->waiters = &j->hq[i];
		r->st.addr_queries++;
		/* May call back before returning (an IP literal, /etc/hosts). */
		ares_getaddrinfo(r->ch, name, NULL, &hints, addr_cb, ha);
	}
	if (--j->pending == 0)
		addrs_done(j);
}

/* TTL of the first answer record of a DNS message (0 if unreadable). */
static unsigned first_ttl(const unsigned char *b, int len)
{
	if (len < 12 || !((b[6] << 8) | b[7]))
		return 0;
	int p = 12;
	for (unsigned q = (unsigned)((b[4] << 8) | b[5]); q > 0; q--) {
		while (p < len && b[p] && (b[p] & 0xc0) != 0xc0)
			p += b[p] + 1;
		p += p < len && b[p] ? 2 : 1;
		p += 4;
	}
	while (p < len && b[p] && (b[p] & 0xc0) != 0xc0)
		p += b[p] + 1;
	p += p < len && b[p] ? 2 : 1;
	if (p + 8 > len)
		return 0;
	return (unsigned)b[p + 4] << 24 | (unsigned)b[p + 5] << 16 |
		(unsigned)b[p + 6] << 8 | b[p + 7];
}

static void implicit_mx(struct job *j)
{
	j->implicit = true;
	j->res.hosts = mem_calloc(1, sizeof *j->res.hosts);
	j->res.hosts[0].name = mem_strdup(j->domain);
	j->res.nhosts = 1;
	resolve_hosts(j);
}

static void mx_cb(void *arg, int status, int timeouts, unsigned char *abuf,
	int alen)
{
	struct job *j = arg;
	(void)timeouts;
	if (status == ARES_EDESTRUCTION)
		return;
	if (status == ARES_ENODATA) {
		implicit_mx(j);
		return;
	}
	if (status == ARES_ENOTFOUND) {
		set_msg(j, DNS_NXDOMAIN, "%s: no such domain (NXDOMAIN)",
			j->domain);
		finish(j);
		return;
	}
	if (status != ARES_SUCCESS) {
		char m[200];
		snprintf(m, sizeof m, "%%s: DNS lookup failed: %s",
			ares_strerror(status));
		set_msg(j, DNS_TEMPFAIL, m, j->domain);
		finish(j);
		return;
	}
	struct ares_mx_reply *mx = NULL;
	int rc = ares_parse_mx_reply(abuf, alen, &mx);
	if (rc == ARES_ENODATA) {
		implicit_mx(j);
		return;
	}
	if (rc != ARES_SUCCESS) {
		set_msg(j, DNS_TEMPFAIL, "%s: unreadable MX answer", j->domain);
		finish(j);
		return;
	}
	unsigned ttl = first_ttl(abuf, alen);
	j->ttl = ttl;
	size_t n = 0;
	bool null_mx = false;
	for (struct ares_mx_reply *m = mx; m; m = m->next) {
		if (!m->host[0] || strcmp(m->host, ".") == 0)
			null_mx = true;
		n++;
	}
	if (null_mx && n == 1) {
		ares_free_data(mx);
		set_msg(j, DNS_NULLMX, "%s: the domain accepts no mail (null MX, "
			"RFC 7505)", j->domain);
		j->res.ttl = ttl;
		finish(j);
		return;
	}
	j->res.hosts = mem_calloc(n < MX_MAX ? n : MX_MAX, sizeof *j->res.hosts);
	for (struct ares_mx_reply *m = mx; m && j->res.nhosts < MX_MAX;
	    m = m->next) {
		if (!m->host[0])
			continue;
		struct dns_host *h = &j->res.hosts[j->res.nhosts++];
		h->name = mem_strdup(m->host);
		for (char *p = h->name; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		h->pref = m->priority;
	}
	ares_free_data(mx);
	if (!j->res.nhosts) {
		set_msg(j, DNS_NOHOST, "%s: MX records without hosts", j->domain);
		finish(j);
		return;
	}
	resolve_hosts(j);
}

static void start_job(dns_resolver *r, struct job *j)
{
	r->active++;
	r->st.queries++;
	ares_query(r->ch, j->domain, ns_c_in, ns_t_mx, mx_cb, j);
	arm_timer(r);
}

/* After a job ended: start waiting ones while there is room. */
static void start_pending(dns_resolver *r)
{
	while (r->pending && r->active < JOBS_MAX) {
		struct job *j = r->pending;
		r->pending = j->next_pending;
		if (!r->pending)
			r->pending_tail = &r->pending;
		start_job(r, j);
	}
}

uint64_t dns_lookup(dns_resolver *r, const char *domain, dns_cb cb,
	void *arg)
{
	char key[256];
	size_t n = 0;
	for (const char *p = domain; *p && n < sizeof key - 1; p++)
		key[n++] = (char)tolower((unsigned char)*p);
	key[n] = 0;
	struct cached *c = ht_get(&r->cache, key);
	if (c && c->expires > now(r)) {
		r->st.cache_hits++;
		cb(arg, &c->res);
		return 0;
	}
	struct waiter *w = mem_calloc(1, sizeof *w);
	w->id = ++r->next_id;
	w->cb = cb;
	w->arg = arg;
	struct job *j = ht_get(&r->jobs, key);
	if (j) {
		r->st.coalesced++;
		w->next = j->waiters;
		j->waiters = w;
		return w->id;
	}
	j = mem_calloc(1, sizeof *j);
	j->r = r;
	j->domain = mem_strdup(key);
	j->waiters = w;
	ht_put(&r->jobs, key, j);
	if (r->active < JOBS_MAX) {
		start_job(r, j);
	} else {
		*r->pending_tail = j;
		r->pending_tail = &j->next_pending;
	}
	return w->id;
}

void dns_cancel(dns_resolver *r, uint64_t id)
{
	if (!id)
		return;
	size_t pos = 0;
	const char *k;
	void *v;
	while (ht_next(&r->jobs, &pos, &k, &v))
		for (struct waiter *w = ((struct job *)v)->waiters; w; w = w->next)
			if (w->id == id) {
				w->cancelled = true;
				return;
			}
}

void dns_get_stats(const dns_resolver *r, struct dns_stats *s)
{
	*s = r->st;
}
