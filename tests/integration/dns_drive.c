/*
 * dns_drive — engine/dns against a real dnsmasq (started by test_dns.py):
 * MX order with equal preferences shuffled by an injected random source,
 * the cache honouring the TTL on an injected clock, coalescing of
 * concurrent lookups, cancel.
 *
 * usage: dns_drive SERVER:PORT   (exit 0 when every check passes)
 */
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dns.h"

static int failures;
static double fake_now = 1000;
static unsigned rnd_state;

static double now_cb(void *arg)
{
	(void)arg;
	return fake_now;
}

static unsigned rand_cb(void *arg)
{
	(void)arg;
	rnd_state = rnd_state * 1103515245u + 12345u;
	return rnd_state >> 8;
}

static void check(const char *name, int ok, const char *detail)
{
	printf("%s - %s%s%s\n", ok ? "ok" : "not ok", name, ok ? "" : " ",
		ok ? "" : detail);
	if (!ok)
		failures++;
}

struct got {
	int calls;
	char order[256];
	enum dns_status st;
	struct ev_loop *loop;
	int want;
};

static void cb(void *arg, const struct dns_result *r)
{
	struct got *g = arg;
	g->calls++;
	g->st = r->status;
	g->order[0] = 0;
	for (size_t i = 0; i < r->nhosts; i++) {
		strncat(g->order, r->hosts[i].name, sizeof g->order -
			strlen(g->order) - 2);
		strcat(g->order, " ");
	}
	if (g->calls >= g->want)
		ev_break(g->loop, EVBREAK_ALL);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

static void run(struct ev_loop *loop)
{
	ev_timer t;
	ev_timer_init(&t, timeout_cb, 10, 0);   /* a bound, not a pace */
	ev_timer_start(loop, &t);
	ev_run(loop, 0);
	ev_timer_stop(loop, &t);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct ev_loop *loop = ev_default_loop(0);
	char err[256];
	char orders[8][256];
	/* Shuffle: one resolver per seed (fresh cache), same domain. */
	for (unsigned seed = 0; seed < 8; seed++) {
		struct dns_config c = { .servers = argv[1], .timeout = 2,
			.tries = 2, .rand = rand_cb, .now = now_cb };
		rnd_state = seed * 7919u + 1;
		dns_resolver *r = dns_new(loop, &c, err, sizeof err);
		if (!r) {
			printf("not ok - dns_new: %s\n", err);
			return 1;
		}
		struct got g = { .loop = loop, .want = 1 };
		dns_lookup(r, "equal.dns.test", cb, &g);
		if (!g.calls)
			run(loop);
		snprintf(orders[seed], sizeof orders[seed], "%s", g.order);
		/* the pref-20 host is always last */
		check("preference order", g.st == DNS_OK &&
			strstr(g.order, "mxd.dns.test ") ==
			g.order + strlen(g.order) - strlen("mxd.dns.test "), g.order);
		dns_free(r);
	}
	int differ = 0;
	for (int i = 1; i < 8; i++)
		if (strcmp(orders[i], orders[0]))
			differ = 1;
	check("equal preferences are shuffled", differ, orders[0]);

	/* Cache, TTL (dnsmasq --local-ttl=30), coalescing, cancel. */
	struct dns_config c = { .servers = argv[1], .timeout = 2, .tries = 2,
		.rand = rand_cb, .now = now_cb };
	dns_resolver *r = dns_new(loop, &c, err, sizeof err);
	struct got a = { .loop = loop, .want = 2 }, b = { .loop = loop };
	dns_lookup(r, "equal.dns.test", cb, &a);
	dns_lookup(r, "equal.dns.test", cb, &a);   /* coalesced */
	uint64_t id = dns_lookup(r, "equal.dns.test", cb, &b);
	dns_cancel(r, id);
	run(loop);
	struct dns_stats st;
	dns_get_stats(r, &st);
	check("concurrent lookups share one query",
		a.calls == 2 && st.queries == 1 && st.coalesced == 2, "");
	check("a cancelled lookup never calls back", b.calls == 0, "");
	check("each MX host's addresses asked once",
		st.addr_queries == 4 && st.addr_cache_hits == 0, "");
	/* Another domain on two of those hosts: only its MX query goes out. */
	struct got s1 = { .loop = loop, .want = 1 };
	dns_lookup(r, "shared.dns.test", cb, &s1);
	if (!s1.calls)
		run(loop);
	dns_get_stats(r, &st);
	check("MX hosts shared by domains: addresses from the host cache",
		s1.st == DNS_OK && strstr(s1.order, "mxa.dns.test") &&
		strstr(s1.order, "mxb.dns.test") && st.addr_queries == 4 &&
		st.addr_cache_hits == 2 && st.queries == 2, s1.order);
	fake_now += 20;
	struct got h = { .loop = loop, .want = 1 };
	dns_lookup(r, "equal.dns.test", cb, &h);
	dns_get_stats(r, &st);
	check("within the TTL: answered from the cache",
		h.calls == 1 && st.queries == 2 && st.cache_hits == 1, "");
	fake_now += 15;   /* 35 s > TTL 30 s */
	struct got e = { .loop = loop, .want = 1 };
	dns_lookup(r, "equal.dns.test", cb, &e);
	if (!e.calls)
		run(loop);
	dns_get_stats(r, &st);
	check("after the TTL: asked again (MX and addresses)",
		e.calls == 1 && e.st == DNS_OK && st.queries == 3 &&
		st.addr_queries == 8, "");
	struct got n = { .loop = loop, .want = 1 };
	dns_lookup(r, "nothere.dns.test", cb, &n);
	if (!n.calls)
		run(loop);
	check("NXDOMAIN", n.st == DNS_NXDOMAIN, "");
	dns_free(r);
	printf("%d failed\n", failures);
	return failures ? 1 : 0;
}
