/*
 * dns — destination resolution for the delivery loop (prefix dns_): c-ares
 * driven by libev, never blocking the loop. docs/dns.md has the rules.
 *
 * dns_lookup(domain) finds where mail for the domain goes: its MX records
 * in preference order (equal preferences shuffled), each MX host with its
 * IPv6 and IPv4 addresses; no MX → the domain's own A/AAAA (implicit MX,
 * RFC 5321 §5.1); a single MX "." → null MX (RFC 7505). Answers are cached
 * for their TTL (failures briefly), and concurrent lookups of one domain
 * share one query. dns_cancel() guarantees the callback will not run.
 */
#ifndef CARTEIRO_DNS_H
#define CARTEIRO_DNS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum dns_status {
	DNS_OK,
	DNS_NXDOMAIN,     /* the domain does not exist: permanent */
	DNS_NULLMX,       /* the domain accepts no mail: permanent */
	DNS_NOHOST,       /* MX hosts without addresses: temporary */
	DNS_TEMPFAIL,     /* SERVFAIL, REFUSED, timeout, network: temporary */
};

struct dns_host {
	char *name;
	unsigned pref;
	struct sockaddr_storage *addrs;   /* port 0: the caller sets it */
	size_t naddrs;
};

struct dns_result {
	enum dns_status status;
	const char *message;
	unsigned ttl;                     /* seconds the answer may be kept */
	struct dns_host *hosts;
	size_t nhosts;
};

struct dns_config {
	const char *servers;   /* "IP[:PORT],[IPv6]:PORT" or NULL: resolv.conf */
	double timeout;        /* seconds per attempt (0 = 5) */
	unsigned tries;        /* 0 = 3 */
	size_t cache_max;      /* entries (0 = 100000) */
	double tempfail_ttl;   /* seconds a failure is remembered (0 = 30) */
	/* Injected for tests: random numbers (shuffling) and the clock. */
	unsigned (*rand)(void *arg);
	double (*now)(void *arg);
	void *arg;
};

typedef struct dns_resolver dns_resolver;
typedef void (*dns_cb)(void *arg, const struct dns_result *r);

dns_resolver *dns_new(struct ev_loop *loop, const struct dns_config *c,
	char *err, size_t errlen);
void dns_free(dns_resolver *r);
/* The callback may run before dns_lookup returns (cache hit). */
uint64_t dns_lookup(dns_resolver *r, const char *domain, dns_cb cb,
	void *arg);
void dns_cancel(dns_resolver *r, uint64_t id);
bool dns_permanent(const struct dns_result *r);
const char *dns_status_name(enum dns_status s);

struct dns_stats {
	uint64_t queries, cache_hits, coalesced;   /* domains (MX) */
	uint64_t addr_queries, addr_cache_hits;    /* MX hosts' addresses */
};
void dns_get_stats(const dns_resolver *r, struct dns_stats *s);

#endif
