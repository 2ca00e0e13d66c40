/*
 * conf — configuration: defaults, INI parsing (inih), validation, show.
 *
 * Contract
 *   cf_init() gives a complete, valid configuration (the embedded defaults:
 *   spool and socket under ./carteiro-data/). cf_load() overlays one INI
 *   file; the first problem found stops it and is reported as
 *   "FILE:LINE: message". Unknown sections and keys are errors, never
 *   ignored: a typo in a throttle must not silently mean "no throttle".
 *
 * Layout
 *   The fixed sections ([engine], [queue], [dns], [smtp], [retry], [dkim])
 *   are described by one table, cf_keys[], whose rows carry the type, the
 *   default, the bounds and the documentation of each key. [route] takes any
 *   domain as key; [site NAME] and [domain NAME] take the keys in
 *   cf_site_keys[].
 *
 * inih is built by Debian with 200-byte lines and without empty-section
 * callbacks, so the file is pre-scanned here for over-long lines and section
 * headers; a long value continues on indented lines (inih multi-line), which
 * list-valued keys accept as more items.
 */
#include "conf/conf.h"
#include "engine/mem.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum cf_type {
	T_STR,       /* free string */
	T_UINT,      /* unsigned integer within [min, max] */
	T_DURATION,  /* "30s", "5m", … stored in ms */
	T_SIZE,      /* "512M" stored in bytes */
	T_TLS,       /* none | opportunistic | required | verify */
	T_SYNC,      /* full | group | none */
	T_DURLIST,   /* retry schedule */
	T_PERCENT,   /* 0..100, optional trailing % */
	T_LOGLEVEL,  /* error | warn | info | debug */
	T_RATE,      /* "120/s", "500/min", "20000/h", "0" stored as double per s */
	T_WARMUP,    /* "500, 1000, 2500" daily caps, or "none" */
	T_BOOL,      /* yes | no */
	T_ADDRS,     /* IP literals, comma-separated */
};

struct cf_key {
	const char *section;
	const char *name;
	enum cf_type type;
	size_t off;
	const char *def;
	uint64_t min, max;
	const char *doc;
};

#define F(field) offsetof(struct cf, field)

/*
 * Every key of the fixed sections. conf/carteiro.conf documents the same
 * keys with the same defaults (tests/unit/test_conf.c checks it).
 */
static const struct cf_key cf_keys[] = {
	{ "engine", "hostname", T_STR, F(hostname), "", 0, 0,
	  "name used in EHLO and Message-ID (\"\" = this machine's name)" },
	{ "engine", "spool", T_STR, F(spool), "./carteiro-data/spool", 0, 0,
	  "directory of the LMDB queue" },
	{ "engine", "socket", T_STR, F(socket), "./carteiro-data/carteiro.sock", 0, 0,
	  "Unix socket of the control protocol" },
	{ "engine", "event_log", T_STR, F(event_log), "./carteiro-data/events.log", 0, 0,
	  "JSON-lines event log (\"-\" = stdout, \"\" = none)" },
	{ "engine", "log_level", T_LOGLEVEL, F(log_level), "info", 0, 0,
	  "error | warn | info | debug" },
	{ "engine", "render_threads", T_UINT, F(render_threads), "0", 0, 256,
	  "render worker threads (0 = one per core)" },
	{ "engine", "bounce_domain", T_STR, F(bounce_domain), "", 0, 0,
	  "domain of the VERP return path bounce+ID@DOMAIN (\"\" = the From domain)" },

	{ "queue", "sync", T_SYNC, F(sync), "group", 0, 0,
	  "full | group | none (none loses data on a crash: benchmarks only)" },
	{ "queue", "group_window", T_DURATION, F(group_window_ms), "5ms", 0, 1000,
	  "how long outcomes are gathered into one commit in group mode" },
	{ "queue", "map_size", T_SIZE, F(map_size), "1G", (uint64_t)16 << 20,
	  (uint64_t)1 << 44, "initial LMDB map size (grows when full)" },
	{ "queue", "max_active", T_UINT, F(max_active), "20000", 100, 10000000,
	  "messages held in memory for delivery at once" },
	{ "queue", "job_chunk", T_UINT, F(job_chunk), "10000", 10, 1000000,
	  "messages per transaction of long jobs (cancel, queue retry/delete)" },
	{ "queue", "render_ahead", T_UINT, F(render_ahead), "50000", 100, 100000000,
	  "rendered but undelivered messages per campaign before rendering waits" },

	{ "dns", "servers", T_STR, F(dns_servers), "", 0, 0,
	  "resolvers as IP[:PORT],… (\"\" = /etc/resolv.conf)" },
	{ "dns", "timeout", T_DURATION, F(dns_timeout_ms), "5s", 10, 600000,
	  "time for one DNS query attempt" },
	{ "dns", "tries", T_UINT, F(dns_tries), "3", 1, 10,
	  "attempts per DNS query" },

	{ "smtp", "tls", T_TLS, F(tls), "opportunistic", 0, 0,
	  "none | opportunistic | required | verify" },
	{ "smtp", "ca_file", T_STR, F(ca_file), "", 0, 0,
	  "CA bundle for tls = verify (\"\" = system default)" },
	{ "smtp", "helo_name", T_STR, F(helo_name), "", 0, 0,
	  "EHLO name (\"\" = [engine] hostname)" },
	{ "smtp", "max_connections", T_UINT, F(max_connections), "1000", 1, 100000,
	  "outbound connections, engine-wide" },
	{ "smtp", "site_max_connections", T_UINT, F(site_max_connections), "20", 1, 10000,
	  "connections per destination site unless [site]/[domain] says otherwise" },
	{ "smtp", "max_messages_per_connection", T_UINT,
	  F(max_messages_per_connection), "100", 1, 1000000,
	  "messages sent on one connection before QUIT" },
	{ "smtp", "site_rate", T_RATE, F(site_rate), "0", 0, 0,
	  "messages per site (N/s, N/min, N/h; 0 = unlimited) unless [site] says otherwise" },
	{ "smtp", "site_rate_burst", T_UINT, F(site_rate_burst), "0", 0, 10000000,
	  "messages a site may get at once after a pause (0 = one second of rate)" },
	{ "smtp", "site_connection_rate", T_RATE, F(site_connection_rate), "0", 0, 0,
	  "new connections per site (N/s, N/min, N/h; 0 = unlimited)" },
	{ "smtp", "warmup", T_WARMUP, F(warmup), "none", 0, 0,
	  "daily caps per site while an IP or domain warms up: 500, 1000, 2500, … (none = off)" },
	{ "smtp", "source", T_ADDRS, 0, "", 0, 0,
	  "local addresses to send from, IP, IP, … (\"\" = the system's choice)" },
	{ "smtp", "source_max_connections", T_UINT, F(source_max_connections), "0", 0, 100000,
	  "connections per source address (0 = unlimited)" },
	{ "smtp", "source_rate", T_RATE, F(source_rate), "0", 0, 0,
	  "messages per source address (N/s, N/min, N/h; 0 = unlimited)" },
	{ "smtp", "connect_timeout", T_DURATION, F(connect_timeout_ms), "30s", 10, 3600000,
	  "TCP connect" },
	{ "smtp", "greeting_timeout", T_DURATION, F(greeting_timeout_ms), "5m", 10, 3600000,
	  "wait for the 220 banner (RFC 5321 4.5.3.2: 5m)" },
	{ "smtp", "command_timeout", T_DURATION, F(command_timeout_ms), "5m", 10, 3600000,
	  "EHLO, MAIL, RCPT, RSET replies (RFC 5321: 5m)" },
	{ "smtp", "data_init_timeout", T_DURATION, F(data_init_timeout_ms), "2m", 10, 3600000,
	  "reply to DATA (RFC 5321: 2m)" },
	{ "smtp", "data_block_timeout", T_DURATION, F(data_block_timeout_ms), "3m", 10, 3600000,
	  "progress while sending content (RFC 5321: 3m)" },
	{ "smtp", "data_term_timeout", T_DURATION, F(data_term_timeout_ms), "10m", 10, 3600000,
	  "reply to the final dot (RFC 5321: 10m)" },
	{ "smtp", "idle_timeout", T_DURATION, F(idle_timeout_ms), "5s", 0, 3600000,
	  "how long an idle connection waits for more messages before QUIT" },

	{ "backoff", "quiet", T_DURATION, F(backoff_quiet_ms), "2m", 100, 86400000,
	  "a throttled site steps back up after this long without a matching reply" },
	{ "backoff", "cooldown", T_DURATION, F(backoff_cooldown_ms), "10s", 0, 3600000,
	  "at most one step down per site in this time" },
	{ "backoff", "step_up", T_PERCENT, F(backoff_step_up_pct), "25%", 1, 100,
	  "how much of the full limits comes back per quiet period" },
	{ "backoff", "floor", T_PERCENT, F(backoff_floor_pct), "10%", 1, 100,
	  "the limits never step below this share of the configured ones" },
	{ "backoff", "postpone_after", T_DURATION, F(backoff_postpone_ms), "1m", 0,
	  86400000, "a suspension this long puts the site's waiting messages back in the queue" },
	{ "backoff", "builtin_rules", T_BOOL, F(backoff_builtin), "yes", 0, 0,
	  "also apply the built-in rules after the file's (yes | no)" },

	{ "retry", "schedule", T_DURLIST, 0, "5m,10m,30m,1h,2h,4h", 1000, 30ull * 86400000,
	  "delays between attempts; the last one repeats" },
	{ "retry", "jitter", T_PERCENT, F(retry_jitter_pct), "10%", 0, 100,
	  "random spread added to each delay" },
	{ "retry", "max_age", T_DURATION, F(max_age_ms), "4d", 1000, 30ull * 86400000,
	  "a message still deferred after this long expires (RFC 5321: 4-5 days)" },

	{ "dkim", "domain", T_STR, F(dkim_domain), "", 0, 0,
	  "signing domain d= (\"\" = no DKIM)" },
	{ "dkim", "selector", T_STR, F(dkim_selector), "", 0, 0,
	  "selector s= of the first key" },
	{ "dkim", "key", T_STR, F(dkim_key), "", 0, 0,
	  "PEM private key (RSA 1024-4096 bits or Ed25519)" },
	{ "dkim", "selector2", T_STR, F(dkim_selector2), "", 0, 0,
	  "selector of a second signature (dual signing, e.g. Ed25519 next to RSA)" },
	{ "dkim", "key2", T_STR, F(dkim_key2), "", 0, 0,
	  "PEM private key of the second signature" },

	{ "whatsapp", "api_url", T_STR, F(wa_api_url), "https://graph.facebook.com/v21.0", 0, 0,
	  "Cloud API base URL (plain http only for a loopback test double)" },
	{ "whatsapp", "phone_number_id", T_STR, F(wa_phone_number_id), "", 0, 0,
	  "sending phone number id (\"\" = WhatsApp channel off)" },
	{ "whatsapp", "token_file", T_STR, F(wa_token_file), "", 0, 0,
	  "file holding the access token (never logged)" },
	{ "whatsapp", "ca_file", T_STR, F(wa_ca_file), "", 0, 0,
	  "CA bundle for a private CA (\"\" = system default)" },
	{ "whatsapp", "rate", T_UINT, F(wa_rate), "80", 0, 1000000,
	  "messages per second for the phone number (0 = unlimited)" },
	{ "whatsapp", "max_connections", T_UINT, F(wa_max_connections), "16", 1, 1000,
	  "HTTP connections (and requests in flight) to the API" },
	{ "whatsapp", "timeout", T_DURATION, F(wa_timeout_ms), "30s", 100, 600000,
	  "whole request; a timeout is retried" },
	{ "whatsapp", "ecosystem_retry", T_DURATION, F(wa_ecosystem_retry_ms), "24h",
	  60000, 30ull * 86400000, "delay before retrying a 131049 (ecosystem) refusal" },
};

static const struct cf_key cf_site_keys[] = {
	{ "site", "mx", T_STR, 0, "", 0, 0,
	  "MX host patterns that make a site ([site] only): *.google.com, …" },
	{ "site", "max_connections", T_UINT, offsetof(struct cf_site, max_connections),
	  "", 1, 10000, "simultaneous connections to the site" },
	{ "site", "max_messages_per_connection", T_UINT,
	  offsetof(struct cf_site, max_messages_per_connection), "", 1, 1000000,
	  "messages per connection" },
	{ "site", "tls", T_TLS, offsetof(struct cf_site, tls), "", 0, 0,
	  "TLS policy for the site" },
	{ "site", "rate", T_RATE, offsetof(struct cf_site, rate), "", 0, 0,
	  "messages per second/minute/hour: 100/s, 500/min (0 = unlimited)" },
	{ "site", "rate_burst", T_UINT, offsetof(struct cf_site, rate_burst), "", 1,
	  10000000, "token bucket depth" },
	{ "site", "connection_rate", T_RATE, offsetof(struct cf_site, connection_rate),
	  "", 0, 0, "new connections per second/minute/hour" },
	{ "site", "warmup", T_WARMUP, offsetof(struct cf_site, warmup), "", 0, 0,
	  "daily caps while warming up, or none" },
};

/*
 * Built-in backoff rules: the throttling replies of the large providers and
 * the generic wording of smaller ones (UOL, Terra, hosting MX). The first
 * rule that matches a reply applies; the file's rules come first.
 */
static const struct cf_rule builtin_rules[] = {
	{ (char *)"*unusual rate*", 50, 600000 },          /* Gmail 421 4.7.28 */
	{ (char *)"4?? 4.7.28 *", 50, 600000 },            /* Gmail */
	{ (char *)"4?? 4.7.65[01] *", 50, 900000 },        /* Outlook.com rate/reputation */
	{ (char *)"*RP-00[123]*", 50, 900000 },            /* Outlook.com rate limit */
	{ (char *)"4?? *TS[S0]0[0-9]*", 50, 900000 },      /* Yahoo [TS01] [TSS04] */
	{ (char *)"4?? *too many connections*", 50, 60000 },
	{ (char *)"4?? *rate limit*", 50, 300000 },
	{ (char *)"4?? *throttl*", 50, 0 },
	{ (char *)"421 *try again later*", 50, 0 },
	{ (char *)"421 4.7.0 *", 50, 0 },
	{ (char *)"421 *", 75, 0 },
};

static const char *const cf_sections[] = {
	"engine", "queue", "dns", "smtp", "backoff", "retry", "dkim", "route",
	"whatsapp",
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static const char *const tls_names[] = { "none", "opportunistic", "required", "verify" };
static const char *const sync_names[] = { "full", "group", "none" };
static const char *const level_names[] = { "error", "warn", "info", "debug" };

const char *
cf_tls_name(int tls)
{
	return tls >= 0 && (size_t)tls < NELEM(tls_names) ? tls_names[tls] : "?";
}

const char *
cf_sync_name(int sync)
{
	return sync >= 0 && (size_t)sync < NELEM(sync_names) ? sync_names[sync] : "?";
}

static int
name_index(const char *const *names, size_t n, const char *v)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(names[i], v) == 0)
			return (int)i;
	return -1;
}

/* ---- value parsers ---------------------------------------------------- */

int
cf_parse_duration(const char *s, uint64_t *ms)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)*s))
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	uint64_t mult;
	if (*end == '\0' || strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		mult = 60000;
	else if (strcmp(end, "h") == 0)
		mult = 3600000;
	else if (strcmp(end, "d") == 0)
		mult = 86400000;
	else
		return -1;
	if (v > UINT64_MAX / mult)
		return -1;
	*ms = v * mult;
	return 0;
}

void
cf_format_duration(uint64_t ms, buf_t *out)
{
	static const struct { uint64_t ms; const char *unit; } units[] = {
		{ 86400000, "d" }, { 3600000, "h" }, { 60000, "m" }, { 1000, "s" },
	};
	for (size_t i = 0; i < NELEM(units); i++)
		if (ms && ms % units[i].ms == 0) {
			buf_printf(out, "%" PRIu64 "%s", ms / units[i].ms, units[i].unit);
			return;
		}
	buf_printf(out, "%" PRIu64 "ms", ms);
}

int
cf_parse_rate(const char *s, double *per_s)
{
	if (strcmp(s, "0") == 0) {
		*per_s = 0;
		return 0;
	}
	if (!isdigit((unsigned char)*s))
		return -1;
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || !(v > 0) || v > 1e9 || *end != '/')
		return -1;
	const char *u = end + 1;
	double div;
	if (strcmp(u, "s") == 0 || strcmp(u, "sec") == 0)
		div = 1;
	else if (strcmp(u, "m") == 0 || strcmp(u, "min") == 0)
		div = 60;
	else if (strcmp(u, "h") == 0 || strcmp(u, "hour") == 0)
		div = 3600;
	else if (strcmp(u, "d") == 0 || strcmp(u, "day") == 0)
		div = 86400;
	else
		return -1;
	*per_s = v / div;
	return 0;
}

void
cf_format_rate(double per_s, buf_t *out)
{
	static const struct { double div; const char *unit; } units[] = {
		{ 1, "s" }, { 60, "min" }, { 3600, "h" },
	};
	if (per_s <= 0) {
		buf_adds(out, "0");
		return;
	}
	for (size_t i = 0; i < NELEM(units); i++) {
		double v = per_s * units[i].div;
		if (v >= 1 && fabs(v - floor(v + 0.5)) < 1e-6) {
			buf_printf(out, "%.0f/%s", v, units[i].unit);
			return;
		}
	}
	buf_printf(out, "%.6g/s", per_s);
}

int
cf_parse_rule(const char *s, struct cf_rule *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof *r);
	const char *arrow = strstr(s, "->");
	if (arrow == NULL) {
		snprintf(err, errlen, "\"%s\": want PATTERN -> slow N%%, suspend "
		    "DURATION", s);
		return -1;
	}
	const char *b = s, *e = arrow;
	while (b < e && isspace((unsigned char)*b))
		b++;
	while (e > b && isspace((unsigned char)e[-1]))
		e--;
	if (b == e || e - b > 200) {
		snprintf(err, errlen, "the pattern before \"->\" must have 1-200 "
		    "characters");
		return -1;
	}
	char *acts = mem_strdup(arrow + 2), *save = NULL;
	int rc = 0, n = 0;
	for (char *a = strtok_r(acts, ",", &save); a && rc == 0;
	     a = strtok_r(NULL, ",", &save)) {
		char word[32], val[64], extra[8];
		int k = sscanf(a, " %31s %63s %7s", word, val, extra);
		uint64_t ms;
		unsigned pct;
		char pc;
		if (k == 2 && strcmp(word, "slow") == 0 &&
		    sscanf(val, "%u%c", &pct, &pc) == 2 && pc == '%' &&
		    pct >= 1 && pct <= 99) {
			r->slow_pct = pct;
		} else if (k == 2 && strcmp(word, "suspend") == 0 &&
		    cf_parse_duration(val, &ms) == 0 && ms >= 1 &&
		    ms <= 86400000) {
			r->suspend_ms = ms;
		} else {
			snprintf(err, errlen, "action \"%s\": want \"slow N%%\" "
			    "(1-99%%) or \"suspend DURATION\" (up to 1d)", a);
			rc = -1;
		}
		n++;
	}
	free(acts);
	if (rc == 0 && n == 0) {
		snprintf(err, errlen, "no action after \"->\" (slow N%%, "
		    "suspend DURATION)");
		rc = -1;
	}
	if (rc == 0)
		r->pattern = mem_strndup(b, (size_t)(e - b));
	return rc;
}

const struct cf_rule *
cf_builtin_rules(size_t *n)
{
	*n = NELEM(builtin_rules);
	return builtin_rules;
}

static void
format_rule(const struct cf_rule *r, buf_t *out)
{
	buf_printf(out, "%s ->", r->pattern);
	if (r->slow_pct)
		buf_printf(out, " slow %u%%", r->slow_pct);
	if (r->suspend_ms) {
		buf_adds(out, r->slow_pct ? ", suspend " : " suspend ");
		cf_format_duration(r->suspend_ms, out);
	}
}

static const char *
parse_warmup(const char *v, struct cf_warmup *w, bool append, char *msg,
    size_t msglen)
{
	struct cf_warmup t;
	if (append)
		t = *w;
	else
		memset(&t, 0, sizeof t);
	t.set = true;
	if (strcmp(v, "none") == 0 || *v == '\0') {
		t.n = 0;
		*w = t;
		return NULL;
	}
	char *copy = mem_strdup(v), *save = NULL;
	const char *err = NULL;
	for (char *tok = strtok_r(copy, ", \t", &save); tok;
	     tok = strtok_r(NULL, ", \t", &save)) {
		char *end;
		errno = 0;
		unsigned long n = strtoul(tok, &end, 10);
		if (!isdigit((unsigned char)*tok) || errno || *end || n < 1 ||
		    n > 100000000) {
			snprintf(msg, msglen, "\"%s\" is not a daily cap "
			    "(1-100000000)", tok);
			err = msg;
			break;
		}
		if (t.n == CF_WARMUP_MAX) {
			snprintf(msg, msglen, "more than %d days", CF_WARMUP_MAX);
			err = msg;
			break;
		}
		t.days[t.n++] = (uint32_t)n;
	}
	free(copy);
	if (err)
		return err;
	*w = t;
	return NULL;
}

static const char *
parse_addrs(struct cf *c, const char *v, bool append, char *msg, size_t msglen)
{
	char **list = NULL;
	size_t n = 0;
	char *copy = mem_strdup(v), *save = NULL;
	const char *err = NULL;
	for (char *tok = strtok_r(copy, ", \t", &save); tok;
	     tok = strtok_r(NULL, ", \t", &save)) {
		unsigned char a[16];
		if (inet_pton(AF_INET, tok, a) != 1 && inet_pton(AF_INET6, tok, a) != 1) {
			snprintf(msg, msglen, "\"%s\" is not an IPv4 or IPv6 address", tok);
			err = msg;
			break;
		}
		list = mem_realloc(list, (n + 1) * sizeof *list);
		list[n++] = mem_strdup(tok);
	}
	free(copy);
	if (err) {
		for (size_t i = 0; i < n; i++)
			free(list[i]);
		free(list);
		return err;
	}
	if (!append) {
		for (size_t i = 0; i < c->nsources; i++)
			free(c->sources[i]);
		free(c->sources);
		c->sources = NULL;
		c->nsources = 0;
	}
	c->sources = mem_realloc(c->sources, (c->nsources + n + 1) * sizeof *list);
	for (size_t i = 0; i < n; i++)
		c->sources[c->nsources++] = list[i];
	free(list);
	return NULL;
}

int
cf_parse_size(const char *s, uint64_t *bytes)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)*s))
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	uint64_t mult = 1;
	switch (*end) {
	case '\0': break;
	case 'k': case 'K': mult = 1ull << 10; end++; break;
	case 'm': case 'M': mult = 1ull << 20; end++; break;
	case 'g': case 'G': mult = 1ull << 30; end++; break;
	case 't': case 'T': mult = 1ull << 40; end++; break;
	default: return -1;
	}
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end != '\0' || v > UINT64_MAX / mult)
		return -1;
	*bytes = v * mult;
	return 0;
}

static void
format_size(uint64_t b, buf_t *out)
{
	static const char units[] = "TGMK";
	for (int i = 0; i < 4; i++) {
		uint64_t m = 1ull << (10 * (4 - i));
		if (b && b % m == 0) {
			buf_printf(out, "%" PRIu64 "%c", b / m, units[i]);
			return;
		}
	}
	buf_printf(out, "%" PRIu64, b);
}

int
cf_parse_hostport(const char *s, char **host, uint16_t *port)
{
	const char *h = s, *colon;
	size_t hlen;
	if (*s == '[') {
		const char *close = strchr(s, ']');
		if (close == NULL || close[1] != ':')
			return -1;
		h = s + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL)
			return -1;  /* bare IPv6 needs brackets */
		hlen = (size_t)(colon - s);
	}
	if (hlen == 0)
		return -1;
	for (size_t i = 0; i < hlen; i++) {
		unsigned char ch = (unsigned char)h[i];
		if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == ':' || ch == '_'))
			return -1;
	}
	char *end;
	errno = 0;
	unsigned long p = strtoul(colon + 1, &end, 10);
	if (errno || *end != '\0' || colon[1] == '\0' || p == 0 || p > 65535)
		return -1;
	*host = mem_strndup(h, hlen);
	*port = (uint16_t)p;
	return 0;
}

/* ---- defaults and teardown -------------------------------------------- */

static char **
str_field(void *base, size_t off)
{
	return (char **)((char *)base + off);
}

static void
free_site(struct cf_site *s)
{
	free(s->name);
	for (size_t i = 0; i < s->nmx; i++)
		free(s->mx[i]);
	free(s->mx);
}

void
cf_free(struct cf *c)
{
	free(c->file);
	for (size_t i = 0; i < NELEM(cf_keys); i++)
		if (cf_keys[i].type == T_STR || cf_keys[i].type == T_LOGLEVEL)
			free(*str_field(c, cf_keys[i].off));
	for (size_t i = 0; i < c->nroutes; i++) {
		free(c->routes[i].domain);
		free(c->routes[i].host);
	}
	free(c->routes);
	for (size_t i = 0; i < c->nsites; i++)
		free_site(&c->sites[i]);
	free(c->sites);
	for (size_t i = 0; i < c->nsources; i++)
		free(c->sources[i]);
	free(c->sources);
	for (size_t i = 0; i < c->nrules; i++)
		free(c->rules[i].pattern);
	free(c->rules);
	for (size_t i = 0; i < c->noverrides; i++)
		free(c->overrides[i]);
	free(c->overrides);
	memset(c, 0, sizeof *c);
}

/*
 * Set one fixed-section key from text; returns an error message or NULL.
 * `append` adds to a list-valued key (a repeated key or an indented
 * continuation line) instead of replacing it.
 */
static const char *set_key(struct cf *c, const struct cf_key *k, const char *v,
    bool append, char *msg, size_t msglen);

void
cf_init(struct cf *c)
{
	char msg[256];
	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < NELEM(cf_keys); i++) {
		const char *e = set_key(c, &cf_keys[i], cf_keys[i].def, false, msg, sizeof msg);
		if (e != NULL) {
			/* A bad embedded default is a programming error. */
			fprintf(stderr, "carteiro: bad default for %s.%s: %s\n",
			    cf_keys[i].section, cf_keys[i].name, e);
			abort();
		}
	}
}

/* ---- one key ---------------------------------------------------------- */

static const char *
parse_uint(const char *v, uint64_t min, uint64_t max, uint64_t *out,
    char *msg, size_t msglen)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)*v))
		return snprintf(msg, msglen, "\"%s\" is not a number", v), msg;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno || *end != '\0')
		return snprintf(msg, msglen, "\"%s\" is not a number", v), msg;
	if (n < min || n > max)
		return snprintf(msg, msglen, "%llu is out of range (%" PRIu64 "-%" PRIu64 ")",
		    n, min, max), msg;
	*out = n;
	return NULL;
}

static const char *
set_key(struct cf *c, const struct cf_key *k, const char *v, bool append,
    char *msg, size_t msglen)
{
	void *field = (char *)c + k->off;
	uint64_t n;
	int idx;
	const char *e;

	switch (k->type) {
	case T_STR:
		free(*(char **)field);
		*(char **)field = mem_strdup(v);
		return NULL;
	case T_LOGLEVEL:
		if (name_index(level_names, NELEM(level_names), v) < 0)
			return snprintf(msg, msglen,
			    "\"%s\" is not a log level (error, warn, info, debug)", v), msg;
		free(*(char **)field);
		*(char **)field = mem_strdup(v);
		return NULL;
	case T_UINT:
		if ((e = parse_uint(v, k->min, k->max, &n, msg, msglen)) != NULL)
			return e;
		*(unsigned *)field = (unsigned)n;
		return NULL;
	case T_PERCENT: {
		char tmp[32];
		snprintf(tmp, sizeof tmp, "%s", v);
		size_t l = strlen(tmp);
		if (l && tmp[l - 1] == '%')
			tmp[l - 1] = '\0';
		if ((e = parse_uint(tmp, k->min, k->max, &n, msg, msglen)) != NULL)
			return e;
		*(unsigned *)field = (unsigned)n;
		return NULL;
	}
	case T_DURATION:
		if (cf_parse_duration(v, &n) < 0)
			return snprintf(msg, msglen,
			    "\"%s\" is not a duration (e.g. 250ms, 30s, 5m, 1h, 4d)", v), msg;
		if (n < k->min || n > k->max)
			return snprintf(msg, msglen, "%s is out of range", v), msg;
		*(uint64_t *)field = n;
		return NULL;
	case T_SIZE:
		if (cf_parse_size(v, &n) < 0)
			return snprintf(msg, msglen,
			    "\"%s\" is not a size (e.g. 512M, 1G)", v), msg;
		if (n < k->min || n > k->max)
			return snprintf(msg, msglen, "%s is out of range (16M-16T)", v), msg;
		*(uint64_t *)field = n;
		return NULL;
	case T_TLS:
		if ((idx = name_index(tls_names, NELEM(tls_names), v)) < 0)
			return snprintf(msg, msglen,
			    "\"%s\" is not a TLS policy (none, opportunistic, required, verify)",
			    v), msg;
		*(int *)field = idx;
		return NULL;
	case T_SYNC:
		if ((idx = name_index(sync_names, NELEM(sync_names), v)) < 0)
			return snprintf(msg, msglen,
			    "\"%s\" is not a sync mode (full, group, none)", v), msg;
		*(int *)field = idx;
		return NULL;
	case T_RATE:
		if (cf_parse_rate(v, (double *)field) < 0)
			return snprintf(msg, msglen, "\"%s\" is not a rate (e.g. 100/s, "
			    "500/min, 20000/h, 0 = unlimited)", v), msg;
		return NULL;
	case T_WARMUP:
		return parse_warmup(v, (struct cf_warmup *)field, append, msg, msglen);
	case T_BOOL:
		if (strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
			*(bool *)field = true;
		else if (strcmp(v, "no") == 0 || strcmp(v, "false") == 0 ||
		    strcmp(v, "0") == 0)
			*(bool *)field = false;
		else
			return snprintf(msg, msglen, "\"%s\" is not yes or no", v), msg;
		return NULL;
	case T_ADDRS:
		return parse_addrs(c, v, append, msg, msglen);
	case T_DURLIST: {
		uint64_t tmp[CF_RETRY_MAX];
		size_t nt = 0;
		if (append) {
			memcpy(tmp, c->retry, c->nretry * sizeof tmp[0]);
			nt = c->nretry;
		}
		char *copy = mem_strdup(v), *save = NULL;
		const char *err = NULL;
		for (char *tok = strtok_r(copy, ", \t", &save); tok;
		     tok = strtok_r(NULL, ", \t", &save)) {
			if (nt == CF_RETRY_MAX) {
				snprintf(msg, msglen, "more than %d delays", CF_RETRY_MAX);
				err = msg;
				break;
			}
			if (cf_parse_duration(tok, &tmp[nt]) < 0 || tmp[nt] < k->min ||
			    tmp[nt] > k->max) {
				snprintf(msg, msglen,
				    "\"%s\" is not a delay between 1s and 30d", tok);
				err = msg;
				break;
			}
			nt++;
		}
		free(copy);
		if (err == NULL && nt == 0) {
			snprintf(msg, msglen, "the schedule needs at least one delay");
			err = msg;
		}
		if (err)
			return err;
		memcpy(c->retry, tmp, nt * sizeof tmp[0]);
		c->nretry = nt;
		return NULL;
	}
	}
	return "internal: unknown key type";
}

/* ---- the file --------------------------------------------------------- */

struct load_ctx {
	struct cf *c;
	char msg[512];       /* first error, without FILE:LINE */
	int failed;
	/* the section being read, tracked here because inih only gives names */
	struct cf_site *cur_site;
	bool site_warmup_seen;   /* continuation lines append */
	char cur_section[128];
	bool seen[64];       /* fixed keys already set by this file */
};

static int
fail(struct load_ctx *x, const char *fmt, ...)
{
	if (!x->failed) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(x->msg, sizeof x->msg, fmt, ap);
		va_end(ap);
		x->failed = 1;
	}
	return 0;  /* tells inih this line is an error */
}

static bool
valid_domain_key(const char *d)
{
	if (strcmp(d, "*") == 0)
		return true;
	if (*d == '\0' || strlen(d) > 253)
		return false;
	for (const char *p = d; *p; p++)
		if (!(isalnum((unsigned char)*p) || *p == '.' || *p == '-'))
			return false;
	return true;
}

static int
handle_route(struct load_ctx *x, const char *name, const char *value)
{
	struct cf *c = x->c;
	if (!valid_domain_key(name))
		return fail(x, "[route] \"%s\" is not a domain or \"*\"", name);
	char *host;
	uint16_t port;
	if (cf_parse_hostport(value, &host, &port) < 0)
		return fail(x, "[route] %s: \"%s\" is not HOST:PORT ([IPv6]:PORT)",
		    name, value);
	char *lower = mem_strdup(name);
	for (char *p = lower; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	for (size_t i = 0; i < c->nroutes; i++)
		if (strcmp(c->routes[i].domain, lower) == 0) {
			free(lower);
			free(host);
			return fail(x, "[route] %s is given twice", name);
		}
	c->routes = mem_realloc(c->routes, (c->nroutes + 1) * sizeof *c->routes);
	c->routes[c->nroutes++] = (struct cf_route){ lower, host, port };
	return 1;
}

static struct cf_site *
new_site(struct cf *c, const char *name, bool is_domain)
{
	c->sites = mem_realloc(c->sites, (c->nsites + 1) * sizeof *c->sites);
	struct cf_site *s = &c->sites[c->nsites++];
	memset(s, 0, sizeof *s);
	s->name = mem_strdup(name);
	s->is_domain = is_domain;
	s->tls = -1;
	s->rate = -1;
	s->connection_rate = -1;
	return s;
}

static int
handle_site(struct load_ctx *x, const char *name, const char *value)
{
	struct cf_site *s = x->cur_site;
	const struct cf_key *k = NULL;
	for (size_t i = 0; i < NELEM(cf_site_keys); i++)
		if (strcmp(cf_site_keys[i].name, name) == 0)
			k = &cf_site_keys[i];
	if (k == NULL)
		return fail(x, "unknown key \"%s\" in [%s]", name, x->cur_section);
	if (strcmp(name, "mx") == 0) {
		if (s->is_domain)
			return fail(x, "\"mx\" belongs in a [site] section, not [%s]",
			    x->cur_section);
		char *copy = mem_strdup(value), *save = NULL;
		for (char *tok = strtok_r(copy, ", \t", &save); tok;
		     tok = strtok_r(NULL, ", \t", &save)) {
			for (char *p = tok; *p; p++)
				*p = (char)tolower((unsigned char)*p);
			s->mx = mem_realloc(s->mx, (s->nmx + 1) * sizeof *s->mx);
			s->mx[s->nmx++] = mem_strdup(tok);
		}
		free(copy);
		return 1;
	}
	char msg[256];
	uint64_t n;
	const char *e;
	if (k->type == T_UINT) {
		if ((e = parse_uint(value, k->min, k->max, &n, msg, sizeof msg)) != NULL)
			return fail(x, "[%s] %s: %s", x->cur_section, name, e);
		*(unsigned *)((char *)s + k->off) = (unsigned)n;
	} else if (k->type == T_RATE) {
		if (cf_parse_rate(value, (double *)((char *)s + k->off)) < 0)
			return fail(x, "[%s] %s: \"%s\" is not a rate (e.g. 100/s, "
			    "500/min, 20000/h, 0 = unlimited)", x->cur_section, name, value);
	} else if (k->type == T_WARMUP) {
		bool append = s->warmup.set && x->site_warmup_seen;
		if ((e = parse_warmup(value, &s->warmup, append, msg, sizeof msg)))
			return fail(x, "[%s] %s: %s", x->cur_section, name, e);
		x->site_warmup_seen = true;
	} else if (k->type == T_TLS) {
		int idx = name_index(tls_names, NELEM(tls_names), value);
		if (idx < 0)
			return fail(x, "[%s] tls: \"%s\" is not a TLS policy "
			    "(none, opportunistic, required, verify)", x->cur_section, value);
		s->tls = idx;
	}
	return 1;
}

static int
on_ini_line(void *user, const char *section, const char *name, const char *value)
{
	struct load_ctx *x = user;
	struct cf *c = x->c;
	if (x->failed)
		return 1;   /* report only the first problem */

	if (strcmp(section, x->cur_section) != 0) {
		/* A new section started; the pre-scan validated its header. */
		snprintf(x->cur_section, sizeof x->cur_section, "%s", section);
		x->cur_site = NULL;
		x->site_warmup_seen = false;
		if (strncmp(section, "site ", 5) == 0 || strncmp(section, "domain ", 7) == 0) {
			bool is_domain = section[0] == 'd';
			const char *nm = section + (is_domain ? 7 : 5);
			while (*nm == ' ')
				nm++;
			for (size_t i = 0; i < c->nsites; i++)
				if (c->sites[i].is_domain == is_domain &&
				    strcmp(c->sites[i].name, nm) == 0)
					x->cur_site = &c->sites[i];
			if (x->cur_site == NULL)
				x->cur_site = new_site(c, nm, is_domain);
		}
	}
	if (x->cur_site)
		return handle_site(x, name, value);
	if (strcmp(section, "route") == 0)
		return handle_route(x, name, value);
	if (strcmp(section, "backoff") == 0 && strcmp(name, "rule") == 0) {
		struct cf_rule r;
		char msg[300];
		if (cf_parse_rule(value, &r, msg, sizeof msg) < 0)
			return fail(x, "[backoff] rule: %s", msg);
		c->rules = mem_realloc(c->rules, (c->nrules + 1) * sizeof *c->rules);
		c->rules[c->nrules++] = r;
		return 1;
	}
	if (*section == '\0')
		return fail(x, "\"%s\" is outside any [section]", name);

	for (size_t i = 0; i < NELEM(cf_keys); i++) {
		const struct cf_key *k = &cf_keys[i];
		if (strcmp(k->section, section) != 0 || strcmp(k->name, name) != 0)
			continue;
		char msg[256];
		const char *e = set_key(c, k, value, x->seen[i], msg, sizeof msg);
		if (e)
			return fail(x, "[%s] %s: %s", section, name, e);
		x->seen[i] = true;
		return 1;
	}
	return fail(x, "unknown key \"%s\" in [%s]", name, section);
}

/*
 * What inih cannot tell us: lines too long for its 200-byte buffer, and
 * section headers (it never reports empty sections). Returns the line of the
 * first problem, 0 if none.
 */
static unsigned
prescan(const char *text, struct load_ctx *x)
{
	unsigned line = 0;
	const char *p = text;
	while (*p) {
		line++;
		const char *eol = strchr(p, '\n');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);
		if (len >= INI_MAX_LINE - 1) {
			fail(x, "line longer than %d characters; continue a long value "
			    "on indented lines", INI_MAX_LINE - 2);
			return line;
		}
		const char *s = p;
		while (s < p + len && isspace((unsigned char)*s))
			s++;
		if (s < p + len && *s == '[' && s == p) {
			const char *close = memchr(s, ']', (size_t)(p + len - s));
			if (close == NULL) {
				fail(x, "section header without ']'");
				return line;
			}
			char name[128];
			size_t nl = (size_t)(close - s - 1);
			if (nl >= sizeof name) {
				fail(x, "section name too long");
				return line;
			}
			memcpy(name, s + 1, nl);
			name[nl] = '\0';
			bool known = false;
			for (size_t i = 0; i < NELEM(cf_sections); i++)
				if (strcmp(cf_sections[i], name) == 0)
					known = true;
			const char *nm = NULL;   /* the NAME of [site NAME] / [domain NAME] */
			if (strncmp(name, "site", 4) == 0 && (name[4] == ' ' || !name[4]))
				nm = name + 4;
			else if (strncmp(name, "domain", 6) == 0 && (name[6] == ' ' || !name[6]))
				nm = name + 6;
			if (nm != NULL) {
				while (*nm == ' ')
					nm++;
				if (*nm == '\0') {
					fail(x, "[%s] needs a name, e.g. [site google] or "
					    "[domain example.com.br]", name);
					return line;
				}
				known = true;
			}
			if (!known) {
				fail(x, "unknown section [%s] (known: engine, queue, dns, smtp, "
				    "backoff, retry, dkim, route, whatsapp, site NAME, domain NAME)", name);
				return line;
			}
		}
		p = eol ? eol + 1 : p + len;
	}
	return 0;
}

static char *
read_file(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	buf_t b = BUF_INIT;
	char chunk[8192];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		buf_add(&b, chunk, n);
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		snprintf(err, errlen, "%s: read error", path);
		buf_free(&b);
		return NULL;
	}
	if (memchr(buf_cstr(&b), '\0', b.len) != NULL) {
		snprintf(err, errlen, "%s: contains a NUL byte; not a text file", path);
		buf_free(&b);
		return NULL;
	}
	return buf_steal(&b, NULL);
}

static int load_text(struct cf *c, const char *path, char *text, char *err,
    size_t errlen);

int
cf_load(struct cf *c, const char *path, char *err, size_t errlen)
{
	char *text = read_file(path, err, errlen);
	if (text == NULL)
		return -1;
	free(c->file);
	c->file = mem_strdup(path);
	return load_text(c, path, text, err, errlen);
}

int
cf_override(struct cf *c, const char *assignment, char *err, size_t errlen)
{
	const char *eq = strchr(assignment, '=');
	const char *dot = eq ? memchr(assignment, '.', (size_t)(eq - assignment)) : NULL;
	if (dot == NULL || dot == assignment || strchr(assignment, '\n')) {
		snprintf(err, errlen, "-o %s: expected SECTION.KEY=VALUE, e.g. "
		    "smtp.tls=none or route.*=127.0.0.1:2525", assignment);
		return -1;
	}
	buf_t b = BUF_INIT;
	buf_printf(&b, "[%.*s]\n%.*s = %s\n", (int)(dot - assignment), assignment,
	    (int)(eq - dot - 1), dot + 1, eq + 1);
	char *text = buf_steal(&b, NULL);
	if (load_text(c, "-o", text, err, errlen) < 0)
		return -1;
	c->overrides = mem_realloc(c->overrides, (c->noverrides + 1) *
	    sizeof *c->overrides);
	c->overrides[c->noverrides++] = mem_strdup(assignment);
	return 0;
}

int
cf_reload(const struct cf *old, struct cf *n, char *err, size_t errlen)
{
	cf_init(n);
	if (old->file && cf_load(n, old->file, err, errlen) < 0)
		return -1;
	for (size_t i = 0; i < old->noverrides; i++)
		if (cf_override(n, old->overrides[i], err, errlen) < 0)
			return -1;
	return 0;
}

/* Parse `text` (consumed) as an INI document named `path` into c. */
static int
load_text(struct cf *c, const char *path, char *text, char *err, size_t errlen)
{
	struct load_ctx x = { .c = c };
	unsigned bad = prescan(text, &x);
	if (bad == 0) {
		int r = ini_parse_string(text, on_ini_line, &x);
		if (r > 0 && !x.failed)
			fail(&x, "syntax error: expected \"key = value\" or \"[section]\"");
		bad = r > 0 ? (unsigned)r : 0;
		if (r < 0) {
			snprintf(err, errlen, "%s: cannot parse", path);
			free(text);
			return -1;
		}
	}
	free(text);
	if (x.failed) {
		snprintf(err, errlen, "%s:%u: %s", path, bad, x.msg);
		return -1;
	}
	if (cf_validate(c, err, errlen) < 0)
		return -1;
	return 0;
}

int
cf_validate(const struct cf *c, char *err, size_t errlen)
{
	const char *file = c->file ? c->file : "(defaults)";
	bool k1 = c->dkim_key && *c->dkim_key, k2 = c->dkim_key2 && *c->dkim_key2;
	if ((k1 || k2) && (!c->dkim_domain || !*c->dkim_domain)) {
		snprintf(err, errlen, "%s: [dkim] a key is set but no domain", file);
		return -1;
	}
	if (k1 && (!c->dkim_selector || !*c->dkim_selector)) {
		snprintf(err, errlen, "%s: [dkim] key is set but no selector", file);
		return -1;
	}
	if (k2 && (!c->dkim_selector2 || !*c->dkim_selector2)) {
		snprintf(err, errlen, "%s: [dkim] key2 is set but no selector2", file);
		return -1;
	}
	if (c->wa_phone_number_id && *c->wa_phone_number_id &&
	    (!c->wa_token_file || !*c->wa_token_file)) {
		snprintf(err, errlen, "%s: [whatsapp] phone_number_id is set but no token_file",
		    file);
		return -1;
	}
	for (size_t i = 0; i < c->nsites; i++)
		if (!c->sites[i].is_domain && c->sites[i].nmx == 0) {
			snprintf(err, errlen, "%s: [site %s] has no mx patterns",
			    file, c->sites[i].name);
			return -1;
		}
	if (c->spool == NULL || *c->spool == '\0' || c->socket == NULL ||
	    *c->socket == '\0') {
		snprintf(err, errlen, "%s: [engine] spool and socket must be set", file);
		return -1;
	}
	return 0;
}

/* ---- lookups ---------------------------------------------------------- */

size_t
cf_key_count(void)
{
	return NELEM(cf_keys);
}

const char *
cf_key_name(size_t i, const char **section, const char **def)
{
	if (i >= NELEM(cf_keys))
		return NULL;
	*section = cf_keys[i].section;
	*def = cf_keys[i].def;
	return cf_keys[i].name;
}

const struct cf_route *
cf_route_find(const struct cf *c, const char *domain)
{
	const struct cf_route *star = NULL;
	for (size_t i = 0; i < c->nroutes; i++) {
		if (strcasecmp(c->routes[i].domain, domain) == 0)
			return &c->routes[i];
		if (strcmp(c->routes[i].domain, "*") == 0)
			star = &c->routes[i];
	}
	return star;
}

/* ---- show ------------------------------------------------------------- */

static void
show_value(const struct cf *c, const struct cf_key *k, buf_t *out)
{
	const void *field = (const char *)c + k->off;
	switch (k->type) {
	case T_STR:
	case T_LOGLEVEL:
		buf_adds(out, *(char *const *)field ? *(char *const *)field : "");
		break;
	case T_UINT:
		buf_printf(out, "%u", *(const unsigned *)field);
		break;
	case T_PERCENT:
		buf_printf(out, "%u%%", *(const unsigned *)field);
		break;
	case T_DURATION:
		cf_format_duration(*(const uint64_t *)field, out);
		break;
	case T_SIZE:
		format_size(*(const uint64_t *)field, out);
		break;
	case T_TLS:
		buf_adds(out, cf_tls_name(*(const int *)field));
		break;
	case T_SYNC:
		buf_adds(out, cf_sync_name(*(const int *)field));
		break;
	case T_RATE:
		cf_format_rate(*(const double *)field, out);
		break;
	case T_WARMUP: {
		const struct cf_warmup *w = field;
		if (!w->n)
			buf_adds(out, "none");
		for (size_t i = 0; i < w->n; i++)
			buf_printf(out, "%s%u", i ? ", " : "", w->days[i]);
		break;
	}
	case T_BOOL:
		buf_adds(out, *(const bool *)field ? "yes" : "no");
		break;
	case T_ADDRS:
		for (size_t i = 0; i < c->nsources; i++)
			buf_printf(out, "%s%s", i ? ", " : "", c->sources[i]);
		break;
	case T_DURLIST:
		for (size_t i = 0; i < c->nretry; i++) {
			if (i)
				buf_addc(out, ',');
			cf_format_duration(c->retry[i], out);
		}
		break;
	}
}

void
cf_show(const struct cf *c, buf_t *out)
{
	buf_printf(out, "# effective configuration (%s)\n",
	    c->file ? c->file : "embedded defaults");
	const char *sec = NULL;
	for (size_t i = 0; i < NELEM(cf_keys); i++) {
		const struct cf_key *k = &cf_keys[i];
		if (sec == NULL || strcmp(sec, k->section) != 0) {
			buf_printf(out, "%s[%s]\n", sec ? "\n" : "", k->section);
			sec = k->section;
		}
		buf_printf(out, "%s = ", k->name);
		show_value(c, k, out);
		buf_addc(out, '\n');
		if (strcmp(k->section, "backoff") == 0 &&
		    strcmp(k->name, "builtin_rules") == 0) {
			for (size_t r = 0; r < c->nrules; r++) {
				buf_adds(out, "rule = ");
				format_rule(&c->rules[r], out);
				buf_addc(out, '\n');
			}
			if (c->backoff_builtin) {
				size_t nb;
				const struct cf_rule *b = cf_builtin_rules(&nb);
				for (size_t r = 0; r < nb; r++) {
					buf_adds(out, "# built-in: rule = ");
					format_rule(&b[r], out);
					buf_addc(out, '\n');
				}
			}
		}
	}
	buf_adds(out, "\n[route]\n");
	for (size_t i = 0; i < c->nroutes; i++) {
		const struct cf_route *r = &c->routes[i];
		bool v6 = strchr(r->host, ':') != NULL;
		buf_printf(out, "%s = %s%s%s:%u\n", r->domain, v6 ? "[" : "", r->host,
		    v6 ? "]" : "", r->port);
	}
	for (size_t i = 0; i < c->nsites; i++) {
		const struct cf_site *s = &c->sites[i];
		buf_printf(out, "\n[%s %s]\n", s->is_domain ? "domain" : "site", s->name);
		if (s->nmx) {
			buf_adds(out, "mx = ");
			for (size_t j = 0; j < s->nmx; j++)
				buf_printf(out, "%s%s", j ? ", " : "", s->mx[j]);
			buf_addc(out, '\n');
		}
		if (s->max_connections)
			buf_printf(out, "max_connections = %u\n", s->max_connections);
		if (s->max_messages_per_connection)
			buf_printf(out, "max_messages_per_connection = %u\n",
			    s->max_messages_per_connection);
		if (s->tls >= 0)
			buf_printf(out, "tls = %s\n", cf_tls_name(s->tls));
		if (s->rate >= 0) {
			buf_adds(out, "rate = ");
			cf_format_rate(s->rate, out);
			buf_addc(out, '\n');
		}
		if (s->rate_burst)
			buf_printf(out, "rate_burst = %u\n", s->rate_burst);
		if (s->connection_rate >= 0) {
			buf_adds(out, "connection_rate = ");
			cf_format_rate(s->connection_rate, out);
			buf_addc(out, '\n');
		}
		if (s->warmup.set) {
			buf_adds(out, "warmup = ");
			if (!s->warmup.n)
				buf_adds(out, "none");
			for (size_t j = 0; j < s->warmup.n; j++)
				buf_printf(out, "%s%u", j ? ", " : "", s->warmup.days[j]);
			buf_addc(out, '\n');
		}
	}
}
