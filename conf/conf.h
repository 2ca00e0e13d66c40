/*
 * conf — carteiro's configuration: embedded defaults, the INI file (inih),
 * validation with FILE:LINE errors, and the effective configuration printed
 * back (`carteiro config show`).
 *
 * Every key lives in one table in conf.c with its type, default and one-line
 * documentation; conf/carteiro.conf is the same information for humans, and a
 * unit test checks that both agree. A struct cf is plain data owned by the
 * caller: cf_init() fills the defaults, cf_load() overlays a file, cf_free()
 * releases it. Loading into a fresh struct and swapping on success is how a
 * reload keeps the old settings when the new file is bad.
 */
#ifndef CARTEIRO_CONF_H
#define CARTEIRO_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"

enum cf_tls { CF_TLS_NONE, CF_TLS_OPPORTUNISTIC, CF_TLS_REQUIRED, CF_TLS_VERIFY };
enum cf_sync { CF_SYNC_FULL, CF_SYNC_GROUP, CF_SYNC_NONE };

#define CF_RETRY_MAX 32
#define CF_WARMUP_MAX 64

/* A warm-up schedule: daily caps, day 1 first ("500, 1000, 2500, …"). */
struct cf_warmup {
	uint32_t days[CF_WARMUP_MAX];
	size_t n;                /* 0 = no warm-up */
	bool set;                /* given here (possibly "none") */
};

/* An adaptive backoff rule: `rule = PATTERN -> slow N%, suspend DURATION`. */
struct cf_rule {
	char *pattern;           /* fnmatch, case-insensitive, on "CODE TEXT" */
	unsigned slow_pct;       /* multiply concurrency and rate by N% (0 = no) */
	uint64_t suspend_ms;     /* stop trying the site this long (0 = no) */
};

/* A static next hop: `[route] DOMAIN = HOST:PORT`; "*" is the smarthost. */
struct cf_route {
	char *domain;   /* lowercase domain or "*" */
	char *host;     /* host name or IP literal (IPv6 without brackets) */
	uint16_t port;
};

/*
 * Limits of a `[site NAME]` (matched by MX host patterns) or a
 * `[domain NAME]` override. A zero value means "not set here".
 */
struct cf_site {
	char *name;
	bool is_domain;          /* [domain NAME] rather than [site NAME] */
	char **mx;               /* MX host patterns ("*.google.com"), sites only */
	size_t nmx;
	unsigned max_connections;
	unsigned max_messages_per_connection;
	int tls;                 /* enum cf_tls, or -1 when not set */
	double rate;             /* messages/s, 0 = unlimited, < 0 = not set */
	unsigned rate_burst;     /* token bucket depth, 0 = not set */
	double connection_rate;  /* new connections/s, < 0 = not set */
	struct cf_warmup warmup;
};

struct cf {
	char *file;              /* the file loaded, NULL for embedded defaults */
	char **overrides;        /* the -o assignments applied, in order */
	size_t noverrides;

	/* [engine] */
	char *hostname;
	char *spool;
	char *socket;
	char *event_log;
	char *log_level;
	unsigned render_threads; /* 0 = one per core */
	char *bounce_domain;     /* VERP return-path domain; "" = the From domain */

	/* [queue] */
	int sync;                /* enum cf_sync */
	uint64_t group_window_ms;
	uint64_t map_size;       /* bytes */
	unsigned max_active;     /* messages held in memory for delivery */
	unsigned render_ahead;   /* rendered, undelivered messages per campaign */
	unsigned job_chunk;      /* messages per transaction of long jobs */

	/* [dns] */
	char *dns_servers;       /* "" = /etc/resolv.conf */
	uint64_t dns_timeout_ms;
	unsigned dns_tries;

	/* [smtp] */
	int tls;                 /* enum cf_tls */
	char *ca_file;
	char *helo_name;         /* "" = hostname */
	unsigned max_connections;           /* engine-wide */
	unsigned site_max_connections;      /* default per site */
	unsigned max_messages_per_connection;
	double site_rate;                   /* messages/s per site, 0 = unlimited */
	unsigned site_rate_burst;           /* 0 = one second of rate */
	double site_connection_rate;        /* connections/s per site, 0 = unlimited */
	struct cf_warmup warmup;            /* default warm-up of every site */
	char **sources;                     /* local addresses to send from */
	size_t nsources;
	unsigned source_max_connections;    /* per source address, 0 = unlimited */
	double source_rate;                 /* messages/s per source, 0 = unlimited */
	uint64_t connect_timeout_ms;
	uint64_t greeting_timeout_ms;
	uint64_t command_timeout_ms;        /* EHLO, MAIL, RCPT, RSET, QUIT */
	uint64_t data_init_timeout_ms;
	uint64_t data_block_timeout_ms;
	uint64_t data_term_timeout_ms;
	uint64_t idle_timeout_ms;

	/* [backoff] */
	uint64_t backoff_quiet_ms;          /* no matching reply this long: step up */
	uint64_t backoff_cooldown_ms;       /* at most one step down per this */
	unsigned backoff_step_up_pct;
	unsigned backoff_floor_pct;
	uint64_t backoff_postpone_ms;       /* suspensions this long re-queue */
	bool backoff_builtin;               /* the built-in rules apply too */
	struct cf_rule *rules;              /* the file's rules, in order */
	size_t nrules;

	/* [retry] */
	uint64_t retry[CF_RETRY_MAX];       /* ms, the last one repeats */
	size_t nretry;
	unsigned retry_jitter_pct;
	uint64_t max_age_ms;

	/* [dkim] */
	char *dkim_domain;
	char *dkim_selector;
	char *dkim_key;
	char *dkim_selector2;
	char *dkim_key2;

	/* [route] */
	struct cf_route *routes;
	size_t nroutes;

	/* [site NAME] and [domain NAME] */
	struct cf_site *sites;
	size_t nsites;

	/* [whatsapp] */
	char *wa_api_url;
	char *wa_phone_number_id;           /* "" = channel off */
	char *wa_token_file;
	char *wa_ca_file;
	unsigned wa_rate;                   /* messages/s, 0 = unlimited */
	unsigned wa_max_connections;
	uint64_t wa_timeout_ms;
	uint64_t wa_ecosystem_retry_ms;
};

/* Fill `c` with the embedded defaults (never fails). */
void cf_init(struct cf *c);
/*
 * Overlay the INI file at `path`. On error returns -1 and writes
 * "FILE:LINE: what is wrong" into err; `c` must then be cf_free()d.
 */
int cf_load(struct cf *c, const char *path, char *err, size_t errlen);
/*
 * One command-line override, "SECTION.KEY=VALUE" (`carteiro serve -o
 * smtp.tls=none -o 'route.*=127.0.0.1:2525'`), validated like a file line;
 * errors are reported as "-o:2: ...".
 */
int cf_override(struct cf *c, const char *assignment, char *err, size_t errlen);
/*
 * A reload: `n` gets the embedded defaults, `old`'s file read again, then
 * `old`'s -o overrides (they outlive reloads, as on the command line).
 * On error n must be cf_free()d and `old` is untouched.
 */
int cf_reload(const struct cf *old, struct cf *n, char *err, size_t errlen);
/* Checks that need the whole file (e.g. dkim keys named but no domain). */
int cf_validate(const struct cf *c, char *err, size_t errlen);
void cf_free(struct cf *c);

/* The effective configuration as an INI document. */
void cf_show(const struct cf *c, buf_t *out);

/* Static route for a domain (exact match, then "*"), or NULL. */
const struct cf_route *cf_route_find(const struct cf *c, const char *domain);

/* Parsers shared with the rest of the engine (and tested on their own). */
int cf_parse_duration(const char *s, uint64_t *ms);   /* "30s", "5m", "4d", "250ms" */
int cf_parse_size(const char *s, uint64_t *bytes);    /* "512M", "1G", "4096" */
int cf_parse_hostport(const char *s, char **host, uint16_t *port); /* "h:25", "[::1]:25" */
void cf_format_duration(uint64_t ms, buf_t *out);
/* "120/s", "500/min", "20000/h", "0" (unlimited) → messages per second. */
int cf_parse_rate(const char *s, double *per_s);
void cf_format_rate(double per_s, buf_t *out);
/* "PATTERN -> slow 50%, suspend 5m"; -1 with a message in err. */
int cf_parse_rule(const char *s, struct cf_rule *r, char *err, size_t errlen);
/* The built-in rules (the common throttling replies of large providers). */
const struct cf_rule *cf_builtin_rules(size_t *n);

/* The key table, for documentation checks: name, its section and default. */
size_t cf_key_count(void);
const char *cf_key_name(size_t i, const char **section, const char **def);

const char *cf_tls_name(int tls);
const char *cf_sync_name(int sync);

#endif
