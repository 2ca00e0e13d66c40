/* Unit tests for conf/: parsing, defaults, FILE:LINE errors, the sample. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "conf/conf.h"

static const char *sample_path;  /* argv[1]: conf/carteiro.conf */

static char *
write_tmp(const char *text)
{
	char *path = strdup("/tmp/carteiro-conf-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

static int
load_text(struct cf *c, const char *text, char *err, size_t errlen)
{
	char *path = write_tmp(text);
	cf_init(c);
	int r = cf_load(c, path, err, errlen);
	/* Replace the random path so messages compare exactly. */
	if (r < 0) {
		char tmp[512];
		const char *rest = strstr(err, path) == err ? err + strlen(path) : err;
		snprintf(tmp, sizeof tmp, "F%s", rest);
		snprintf(err, errlen, "%s", tmp);
	}
	unlink(path);
	free(path);
	return r;
}

static void
test_defaults(void **state)
{
	(void)state;
	struct cf c;
	cf_init(&c);
	assert_string_equal(c.spool, "./carteiro-data/spool");
	assert_string_equal(c.socket, "./carteiro-data/carteiro.sock");
	assert_int_equal(c.sync, CF_SYNC_GROUP);
	assert_int_equal(c.tls, CF_TLS_OPPORTUNISTIC);
	assert_int_equal(c.nretry, 6);
	assert_int_equal(c.retry[0], 5 * 60000);
	assert_int_equal(c.retry[5], 4 * 3600000);
	assert_int_equal(c.max_age_ms, 4ull * 86400000);
	assert_int_equal(c.greeting_timeout_ms, 300000);
	assert_int_equal(c.group_window_ms, 5);
	char err[256];
	assert_int_equal(cf_validate(&c, err, sizeof err), 0);
	cf_free(&c);
}

static void
test_load_values(void **state)
{
	(void)state;
	struct cf c;
	char err[512];
	int r = load_text(&c,
	    "[engine]\nspool = /var/spool/carteiro\n"
	    "[queue]\nsync = full\ngroup_window = 20ms\nmap_size = 4G\n"
	    "[retry]\nschedule = 1m, 2m,\n  1h\njitter = 0\nmax_age = 5d\n"
	    "[route]\n* = 127.0.0.1:2525\nExemplo.com.br = [::1]:25\n"
	    "[site google]\nmx = *.google.com, *.googlemail.com\nmax_connections = 50\n"
	    "[domain uol.com.br]\nmax_connections = 5\ntls = verify\n",
	    err, sizeof err);
	assert_int_equal(r, 0);
	assert_string_equal(c.spool, "/var/spool/carteiro");
	assert_int_equal(c.sync, CF_SYNC_FULL);
	assert_int_equal(c.group_window_ms, 20);
	assert_int_equal(c.map_size, 4ull << 30);
	assert_int_equal(c.nretry, 3);
	assert_int_equal(c.retry[2], 3600000);
	assert_int_equal(c.retry_jitter_pct, 0);
	const struct cf_route *rt = cf_route_find(&c, "exemplo.com.br");
	assert_non_null(rt);
	assert_string_equal(rt->host, "::1");
	assert_int_equal(rt->port, 25);
	rt = cf_route_find(&c, "gmail.com");
	assert_non_null(rt);
	assert_string_equal(rt->host, "127.0.0.1");
	assert_int_equal(c.nsites, 2);
	assert_string_equal(c.sites[0].name, "google");
	assert_int_equal(c.sites[0].nmx, 2);
	assert_string_equal(c.sites[0].mx[1], "*.googlemail.com");
	assert_int_equal(c.sites[0].max_connections, 50);
	assert_true(c.sites[1].is_domain);
	assert_int_equal(c.sites[1].tls, CF_TLS_VERIFY);
	cf_free(&c);
}

struct bad_case {
	const char *text;
	const char *err;
};

static const struct bad_case bad_cases[] = {
	{ "[engine]\nspool = x\n[bogus]\n", "F:3: unknown section [bogus]" },
	{ "[engine]\nspoool = x\n", "F:2: unknown key \"spoool\" in [engine]" },
	{ "\n\n[queue]\nsync = sometimes\n",
	  "F:4: [queue] sync: \"sometimes\" is not a sync mode (full, group, none)" },
	{ "[smtp]\nmax_connections = 0\n",
	  "F:2: [smtp] max_connections: 0 is out of range (1-100000)" },
	{ "[smtp]\nconnect_timeout = soon\n",
	  "F:2: [smtp] connect_timeout: \"soon\" is not a duration" },
	{ "[retry]\nschedule = 5m,,x\n", "F:2: [retry] schedule: \"x\" is not a delay" },
	{ "[route]\nexample.com = nowhere\n",
	  "F:2: [route] example.com: \"nowhere\" is not HOST:PORT" },
	{ "[route]\nbad domain = a:1\n", "F:2: [route] \"bad domain\" is not a domain" },
	{ "[site]\nmx = x\n", "F:1: [site] needs a name" },
	{ "[site g]\nspeed = 1\n", "F:2: unknown key \"speed\" in [site g]" },
	{ "[site g]\nrate = 1\n", "F:2: [site g] rate: \"1\" is not a rate" },
	{ "[smtp]\nsite_rate = 10/week\n", "F:2: [smtp] site_rate: \"10/week\" is not a rate" },
	{ "[smtp]\nwarmup = 500, lots\n", "F:2: [smtp] warmup: \"lots\" is not a daily cap" },
	{ "[smtp]\nsource = 127.0.0.1, mail.example\n",
	  "F:2: [smtp] source: \"mail.example\" is not an IPv4 or IPv6 address" },
	{ "[backoff]\nrule = 421 *\n", "F:2: [backoff] rule: \"421 *\": want PATTERN ->" },
	{ "[backoff]\nrule = 421 * -> slow 150%\n", "F:2: [backoff] rule: action \" slow 150%\"" },
	{ "[backoff]\nrule = 421 * -> nap 5m\n", "F:2: [backoff] rule: action \" nap 5m\"" },
	{ "[backoff]\nbuiltin_rules = maybe\n", "F:2: [backoff] builtin_rules: \"maybe\" is not yes or no" },
	{ "[domain a.com]\nmx = x\n", "F:2: \"mx\" belongs in a [site] section" },
	{ "[engine]\nthis is not ini\n", "F:2: syntax error" },
	{ "spool = x\n", "F:1: \"spool\" is outside any [section]" },
	{ "[dkim]\nkey = /k.pem\n", "F: [dkim] a key is set but no domain" },
	{ "[site g]\nmax_connections = 2\n", "F: [site g] has no mx patterns" },
};

static void
test_bad_files(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
		struct cf c;
		char err[512];
		int r = load_text(&c, bad_cases[i].text, err, sizeof err);
		if (r != -1 || strncmp(err, bad_cases[i].err, strlen(bad_cases[i].err)) != 0)
			fail_msg("case %zu: got r=%d err=\"%s\", want \"%s\"", i, r, err,
			    bad_cases[i].err);
		cf_free(&c);
	}
}

static void
test_long_line(void **state)
{
	(void)state;
	char text[600];
	snprintf(text, sizeof text, "[engine]\nhostname = %0400d\n", 7);
	struct cf c;
	char err[512];
	assert_int_equal(load_text(&c, text, err, sizeof err), -1);
	assert_non_null(strstr(err, "F:2: line longer than"));
	cf_free(&c);
}

static void
test_missing_file(void **state)
{
	(void)state;
	struct cf c;
	char err[512];
	cf_init(&c);
	assert_int_equal(cf_load(&c, "/nonexistent/carteiro.conf", err, sizeof err), -1);
	assert_non_null(strstr(err, "/nonexistent/carteiro.conf: cannot open"));
	cf_free(&c);
}

static void
test_parsers(void **state)
{
	(void)state;
	uint64_t v;
	assert_int_equal(cf_parse_duration("250ms", &v), 0);
	assert_int_equal(v, 250);
	assert_int_equal(cf_parse_duration("30", &v), 0);
	assert_int_equal(v, 30000);
	assert_int_equal(cf_parse_duration("4d", &v), 0);
	assert_int_equal(v, 4ull * 86400000);
	assert_int_equal(cf_parse_duration("-1s", &v), -1);
	assert_int_equal(cf_parse_duration("5 m", &v), -1);
	assert_int_equal(cf_parse_size("512M", &v), 0);
	assert_int_equal(v, 512ull << 20);
	assert_int_equal(cf_parse_size("1GB", &v), 0);
	assert_int_equal(v, 1ull << 30);
	assert_int_equal(cf_parse_size("1X", &v), -1);
	char *h;
	uint16_t p;
	assert_int_equal(cf_parse_hostport("[2001:db8::1]:2525", &h, &p), 0);
	assert_string_equal(h, "2001:db8::1");
	assert_int_equal(p, 2525);
	free(h);
	assert_int_equal(cf_parse_hostport("2001:db8::1:25", &h, &p), -1);
	assert_int_equal(cf_parse_hostport("mx.example.com:0", &h, &p), -1);
	assert_int_equal(cf_parse_hostport("mx.example.com:65536", &h, &p), -1);
	assert_int_equal(cf_parse_hostport("mx\r\n.com:25", &h, &p), -1);
	buf_t b = BUF_INIT;
	cf_format_duration(90000, &b);
	assert_string_equal(buf_cstr(&b), "90s");
	buf_free(&b);
}

/*
 * conf/carteiro.conf sets every key to its default: loading it must give
 * exactly the embedded defaults, and it must mention every key of the table.
 */
static void
test_sample_matches_defaults(void **state)
{
	(void)state;
	struct cf d, s;
	char err[512];
	cf_init(&d);
	cf_init(&s);
	if (cf_load(&s, sample_path, err, sizeof err) < 0)
		fail_msg("%s", err);
	buf_t bd = BUF_INIT, bs = BUF_INIT;
	cf_show(&d, &bd);
	cf_show(&s, &bs);
	const char *body_d = strchr(buf_cstr(&bd), '\n');
	const char *body_s = strchr(buf_cstr(&bs), '\n');
	assert_string_equal(body_d, body_s);

	FILE *f = fopen(sample_path, "r");
	assert_non_null(f);
	char line[512], section[64] = "";
	int seen[128] = { 0 };
	assert_true(cf_key_count() <= 128);
	while (fgets(line, sizeof line, f)) {
		char name[128];
		if (sscanf(line, "[%63[^]]]", section) == 1)
			continue;
		if (sscanf(line, "%127[a-z0-9_] =", name) != 1)
			continue;
		for (size_t i = 0; i < cf_key_count(); i++) {
			const char *sec, *def;
			const char *k = cf_key_name(i, &sec, &def);
			if (strcmp(k, name) == 0 && strcmp(sec, section) == 0)
				seen[i] = 1;
		}
	}
	fclose(f);
	for (size_t i = 0; i < cf_key_count(); i++) {
		const char *sec, *def;
		const char *k = cf_key_name(i, &sec, &def);
		if (!seen[i])
			fail_msg("conf/carteiro.conf does not document [%s] %s", sec, k);
	}
	buf_free(&bd);
	buf_free(&bs);
	cf_free(&d);
	cf_free(&s);
}

static void
test_show_roundtrip(void **state)
{
	(void)state;
	struct cf c, c2;
	char err[512];
	assert_int_equal(load_text(&c,
	    "[route]\n* = [::1]:2525\n[site g]\nmx = *.g.com\nmax_connections = 3\n"
	    "rate = 500/min\nconnection_rate = 2/s\nwarmup = 5, 10\n"
	    "[smtp]\nsource = 127.0.0.2, ::1\nsite_rate = 7/h\nwarmup = 100\n"
	    "[backoff]\nrule = 421 * -> slow 50%, suspend 90s\nbuiltin_rules = no\n"
	    "[retry]\nschedule = 90s,2h\n", err, sizeof err), 0);
	buf_t b = BUF_INIT;
	cf_show(&c, &b);
	/* What show prints is itself a valid file with the same meaning. */
	assert_int_equal(load_text(&c2, buf_cstr(&b), err, sizeof err), 0);
	buf_t b2 = BUF_INIT;
	cf_show(&c2, &b2);
	assert_string_equal(strchr(buf_cstr(&b), '\n'), strchr(buf_cstr(&b2), '\n'));
	buf_free(&b);
	buf_free(&b2);
	cf_free(&c);
	cf_free(&c2);
}

static void
test_shaping_keys(void **state)
{
	(void)state;
	struct cf c;
	char err[512];
	assert_int_equal(load_text(&c,
	    "[smtp]\nsite_rate = 120/min\nsite_connection_rate = 3/s\n"
	    "warmup = 500, 1000,\n  2500\nsource = 127.0.0.2, 127.0.0.3\n"
	    "source_max_connections = 4\nsource_rate = 36000/h\n"
	    "[backoff]\nquiet = 30s\nrule = 4?? *limite* -> slow 25%, suspend 30m\n"
	    "rule = *bloqueado* -> suspend 1h\n"
	    "[site uol]\nmx = *.uol.com.br\nrate = 20/s\nrate_burst = 40\nwarmup = none\n"
	    "[domain terra.com.br]\nconnection_rate = 10/min\n", err, sizeof err), 0);
	assert_true(c.site_rate > 1.999 && c.site_rate < 2.001);
	assert_true(c.site_connection_rate > 2.999 && c.site_connection_rate < 3.001);
	assert_int_equal(c.warmup.n, 3);
	assert_int_equal(c.warmup.days[2], 2500);
	assert_int_equal(c.nsources, 2);
	assert_string_equal(c.sources[1], "127.0.0.3");
	assert_int_equal(c.source_max_connections, 4);
	assert_true(c.source_rate > 9.999 && c.source_rate < 10.001);
	assert_int_equal(c.backoff_quiet_ms, 30000);
	assert_true(c.backoff_builtin);
	assert_int_equal(c.nrules, 2);
	assert_string_equal(c.rules[0].pattern, "4?? *limite*");
	assert_int_equal(c.rules[0].slow_pct, 25);
	assert_int_equal(c.rules[0].suspend_ms, 1800000);
	assert_int_equal(c.rules[1].slow_pct, 0);
	assert_int_equal(c.rules[1].suspend_ms, 3600000);
	assert_int_equal(c.nsites, 2);
	assert_true(c.sites[0].rate > 19.999 && c.sites[0].rate < 20.001);
	assert_int_equal(c.sites[0].rate_burst, 40);
	assert_true(c.sites[0].warmup.set);
	assert_int_equal(c.sites[0].warmup.n, 0);
	assert_true(c.sites[0].connection_rate < 0);       /* not set */
	assert_true(c.sites[1].rate < 0);
	assert_true(c.sites[1].connection_rate > 0.1666 &&
	    c.sites[1].connection_rate < 0.1667);
	cf_free(&c);

	double r;
	assert_int_equal(cf_parse_rate("0", &r), 0);
	assert_true(r == 0);
	assert_int_equal(cf_parse_rate("1.5/s", &r), 0);
	assert_int_equal(cf_parse_rate("/s", &r), -1);
	assert_int_equal(cf_parse_rate("-1/s", &r), -1);
	assert_int_equal(cf_parse_rate("0/s", &r), -1);
	assert_int_equal(cf_parse_rate("10", &r), -1);
	buf_t b = BUF_INIT;
	cf_format_rate(2.0 / 60, &b);
	assert_string_equal(buf_cstr(&b), "2/min");
	buf_reset(&b);
	cf_format_rate(0.5, &b);
	assert_string_equal(buf_cstr(&b), "30/min");
	buf_reset(&b);
	cf_format_rate(100, &b);
	assert_string_equal(buf_cstr(&b), "100/s");
	buf_free(&b);
	size_t nb;
	const struct cf_rule *bi = cf_builtin_rules(&nb);
	assert_true(nb >= 8);
	for (size_t i = 0; i < nb; i++)
		assert_true(bi[i].slow_pct || bi[i].suspend_ms);
}

static void
test_overrides(void **state)
{
	(void)state;
	struct cf c;
	char err[512];
	cf_init(&c);
	assert_int_equal(cf_override(&c, "smtp.tls=none", err, sizeof err), 0);
	assert_int_equal(c.tls, CF_TLS_NONE);
	assert_int_equal(cf_override(&c, "route.*=127.0.0.1:2525", err,
	    sizeof err), 0);
	const struct cf_route *r = cf_route_find(&c, "gmail.com");
	assert_non_null(r);
	assert_string_equal(r->host, "127.0.0.1");
	assert_int_equal(r->port, 2525);
	assert_int_equal(cf_override(&c, "site google.max_connections=7", err,
	    sizeof err), -1);   /* a site needs its mx patterns first */
	assert_non_null(strstr(err, "no mx patterns"));
	cf_free(&c);
	cf_init(&c);
	assert_int_equal(cf_override(&c, "site google.mx=*.google.test", err,
	    sizeof err), 0);
	assert_int_equal(cf_override(&c, "site google.max_connections=7", err,
	    sizeof err), 0);
	assert_int_equal(c.nsites, 1);
	assert_int_equal(c.sites[0].max_connections, 7);
	/* Bad values are reported like file lines. */
	assert_int_equal(cf_override(&c, "smtp.tls=sometimes", err, sizeof err),
	    -1);
	assert_non_null(strstr(err, "-o:2: [smtp] tls"));
	assert_int_equal(cf_override(&c, "nosuch.key=1", err, sizeof err), -1);
	assert_non_null(strstr(err, "unknown section [nosuch]"));
	assert_int_equal(cf_override(&c, "smtp.tls", err, sizeof err), -1);
	assert_int_equal(cf_override(&c, "tls=none", err, sizeof err), -1);
	cf_free(&c);
}

static void
rewrite(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	fclose(f);
}

/* A reload reads the file again and re-applies the -o overrides; a bad
 * file leaves the old configuration as it was. */
static void
test_reload(void **state)
{
	(void)state;
	struct cf c, n;
	char err[512];
	char *path = write_tmp("[smtp]\ntls = required\n[queue]\n"
	    "job_chunk = 500\n");
	cf_init(&c);
	assert_int_equal(cf_load(&c, path, err, sizeof err), 0);
	assert_int_equal(cf_override(&c, "smtp.tls=none", err, sizeof err), 0);
	assert_int_equal(c.noverrides, 1);
	rewrite(path, "[smtp]\ntls = required\n[queue]\njob_chunk = 700\n");
	assert_int_equal(cf_reload(&c, &n, err, sizeof err), 0);
	assert_int_equal(n.job_chunk, 700);          /* the file's new value */
	assert_int_equal(n.tls, CF_TLS_NONE);        /* the override still wins */
	assert_int_equal(n.noverrides, 1);
	cf_free(&n);
	rewrite(path, "[smtp]\ntls = required\n[queue]\njob_chunk = lots\n");
	assert_int_equal(cf_reload(&c, &n, err, sizeof err), -1);
	char where[600];
	snprintf(where, sizeof where, "%s:4: [queue] job_chunk", path);
	assert_non_null(strstr(err, where));
	cf_free(&n);
	assert_int_equal(c.job_chunk, 500);          /* old settings untouched */
	unlink(path);
	free(path);
	cf_free(&c);
}

int
main(int argc, char **argv)
{
	sample_path = argc > 1 ? argv[1] : "conf/carteiro.conf";
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_load_values),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_parsers),
		cmocka_unit_test(test_sample_matches_defaults),
		cmocka_unit_test(test_show_roundtrip),
		cmocka_unit_test(test_overrides),
		cmocka_unit_test(test_reload),
		cmocka_unit_test(test_shaping_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
