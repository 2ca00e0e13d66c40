/*
 * main — the `carteiro` command line: `serve` runs the engine, every other
 * command is a client of the control socket (docs/protocol.md), except
 * `config check|show`, which read the configuration locally.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf.h"
#include "engine/buf.h"
#include "engine/control.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/server.h"

static void usage(FILE *f)
{
	fputs(
"usage: carteiro COMMAND [OPTIONS]\n"
"\n"
"  serve [-c FILE] [-o SECTION.KEY=VALUE]...   run the engine (foreground)\n"
"  submit [-s SOCKET] CAMPAIGN.json [--wait]  submit a campaign, print its id\n"
"  status [ID] [--json] [--sites] [--bounces] campaigns, engine, bounce report\n"
"  pause|resume|cancel ID                     act on a campaign's messages\n"
"  suppress add|remove ADDRESS [--reason R]   the suppression list\n"
"  suppress list\n"
"  queue list [--campaign ID] [--domain D] [--state S] [--limit N]\n"
"  queue show MSG                             headers, state, last reply\n"
"  queue retry [--campaign ID] [--domain D] [--msg MSG]   due now\n"
"  queue delete (--campaign ID | --domain D | --msg MSG)\n"
"  config check [-c FILE] [-o ...]            validate without starting\n"
"  config show [-c FILE] [-o ...]             print the effective config\n"
"  config reload                              engine re-reads its file\n"
"  stop                                       finish in-flight work, exit\n"
"\n"
"Client commands find the socket with -s SOCKET, else $CARTEIRO_SOCKET,\n"
"else [engine] socket of -c FILE, else ./carteiro-data/carteiro.sock.\n",
		f);
}

struct opts {
	const char *config;
	const char *socket;
	const char **overrides;
	size_t noverrides;
	bool wait;
	bool json;
	bool sites;
	bool bounces;
	bool quiet;
	const char *campaign, *domain, *state, *msg, *reason;
	long limit;
	char **args;
	int nargs;
};

static void parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "socket", required_argument, NULL, 's' },
		{ "option", required_argument, NULL, 'o' },
		{ "wait", no_argument, NULL, 'w' },
		{ "json", no_argument, NULL, 'j' },
		{ "sites", no_argument, NULL, 'S' },
		{ "bounces", no_argument, NULL, 'B' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "campaign", required_argument, NULL, 'C' },
		{ "domain", required_argument, NULL, 'D' },
		{ "state", required_argument, NULL, 'T' },
		{ "msg", required_argument, NULL, 'M' },
		{ "reason", required_argument, NULL, 'R' },
		{ "limit", required_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	memset(o, 0, sizeof *o);
	while ((ch = getopt_long(argc, argv, "c:s:o:wqh", lo, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 's': o->socket = optarg; break;
		case 'o':
			o->overrides = mem_realloc(o->overrides,
				(o->noverrides + 1) * sizeof *o->overrides);
			o->overrides[o->noverrides++] = optarg;
			break;
		case 'w': o->wait = true; break;
		case 'j': o->json = true; break;
		case 'S': o->sites = true; break;
		case 'B': o->bounces = true; break;
		case 'q': o->quiet = true; break;
		case 'C': o->campaign = optarg; break;
		case 'D': o->domain = optarg; break;
		case 'T': o->state = optarg; break;
		case 'M': o->msg = optarg; break;
		case 'R': o->reason = optarg; break;
		case 'L': o->limit = strtol(optarg, NULL, 10); break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	o->args = argv + optind;
	o->nargs = argc - optind;
}

/* Embedded defaults, then -c FILE, then each -o. */
static int load_config(const struct opts *o, struct cf *cf)
{
	char err[1024];
	cf_init(cf);
	if (o->config && cf_load(cf, o->config, err, sizeof err) < 0) {
		fprintf(stderr, "carteiro: %s\n", err);
		return -1;
	}
	for (size_t i = 0; i < o->noverrides; i++)
		if (cf_override(cf, o->overrides[i], err, sizeof err) < 0) {
			fprintf(stderr, "carteiro: %s\n", err);
			return -1;
		}
	if (cf_validate(cf, err, sizeof err) < 0) {
		fprintf(stderr, "carteiro: %s\n", err);
		return -1;
	}
	return 0;
}

static char *socket_path(const struct opts *o)
{
	if (o->socket)
		return mem_strdup(o->socket);
	const char *env = getenv("CARTEIRO_SOCKET");
	if (env && *env)
		return mem_strdup(env);
	struct cf cf;
	if (load_config(o, &cf) < 0)
		exit(2);
	char *p = mem_strdup(cf.socket);
	cf_free(&cf);
	return p;
}

/* Send a request; print an error reply and return NULL on failure. */
static json_t *call(const struct opts *o, json_t *req)
{
	char err[512];
	json_t *reply;
	char *path = socket_path(o);
	int rc = ctl_call(path, req, &reply, err, sizeof err);
	free(path);
	json_decref(req);
	if (rc < 0) {
		fprintf(stderr, "carteiro: %s\n", err);
		return NULL;
	}
	if (!json_is_true(json_object_get(reply, "ok"))) {
		json_t *e = json_object_get(reply, "error");
		const char *where = json_string_value(json_object_get(e, "where"));
		fprintf(stderr, "carteiro: %s%s%s\n", where ? where : "",
			where ? ": " : "",
			json_string_value(json_object_get(e, "message")));
		json_decref(reply);
		return NULL;
	}
	return reply;
}

static void print_json(json_t *j)
{
	json_object_del(j, "ok");
	char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	puts(s);
	free(s);
}

static json_int_t geti(json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

/* ---- serve ---- */

static void mkdir_parents(const char *path)
{
	char d[PATH_MAX];
	snprintf(d, sizeof d, "%s", path);
	char *slash = strrchr(d, '/');
	if (!slash || slash == d)
		return;
	*slash = 0;
	for (char *p = d + 1; *p; p++)
		if (*p == '/') {
			*p = 0;
			mkdir(d, 0750);
			*p = '/';
		}
	mkdir(d, 0750);
}

static int cmd_serve(const struct opts *o)
{
	struct cf *cf = mem_calloc(1, sizeof *cf);
	if (load_config(o, cf) < 0) {
		cf_free(cf);
		free(cf);
		return 2;
	}
	mkdir_parents(cf->socket);
	if (strcmp(cf->event_log, "-") != 0)
		mkdir_parents(cf->event_log);
	return srv_run(cf);
}

/* ---- submit ---- */

static void progress(json_t *c, bool tty, double *last_print, bool force)
{
	json_int_t total = geti(c, "total"), fin = geti(c, "finished");
	double rate = json_real_value(json_object_get(c, "rate"));
	double pct = total ? 100.0 * (double)fin / (double)total : 0;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	double now = (double)ts.tv_sec + ts.tv_nsec / 1e9;
	if (!tty && !force && now - *last_print < 2.0)
		return;
	*last_print = now;
	char bar[31];
	int filled = (int)(pct * 30 / 100);
	for (int i = 0; i < 30; i++)
		bar[i] = i < filled ? '#' : '.';
	bar[30] = 0;
	fprintf(stderr, "%s[%s] %5.1f%% %" JSON_INTEGER_FORMAT "/%"
		JSON_INTEGER_FORMAT " delivered %" JSON_INTEGER_FORMAT
		" deferrals %" JSON_INTEGER_FORMAT " bounced %" JSON_INTEGER_FORMAT
		" %.0f msg/s%s", tty ? "\r" : "", bar, pct, fin, total,
		geti(c, "delivered"), geti(c, "deferrals"), geti(c, "bounced"),
		rate, tty ? "\033[K" : "\n");
	fflush(stderr);
}

static void summary(json_t *c)
{
	double secs = json_real_value(json_object_get(c, "elapsed"));
	fprintf(stderr,
		"campaign %" JSON_INTEGER_FORMAT " \"%s\" %s in %.2f s\n"
		"  contacts   %" JSON_INTEGER_FORMAT "\n"
		"  delivered  %" JSON_INTEGER_FORMAT "\n"
		"  deferred   %" JSON_INTEGER_FORMAT " (deferred attempts)\n"
		"  bounced    %" JSON_INTEGER_FORMAT "\n"
		"  expired    %" JSON_INTEGER_FORMAT "\n"
		"  suppressed %" JSON_INTEGER_FORMAT "\n"
		"  failed     %" JSON_INTEGER_FORMAT "\n"
		"  cancelled  %" JSON_INTEGER_FORMAT "\n"
		"  rate       %.0f msgs/s\n",
		geti(c, "id"), json_string_value(json_object_get(c, "name")),
		json_string_value(json_object_get(c, "state")), secs,
		geti(c, "total"), geti(c, "delivered"), geti(c, "deferrals"),
		geti(c, "bounced"), geti(c, "expired"), geti(c, "suppressed"),
		geti(c, "failed"), geti(c, "cancelled"),
		json_real_value(json_object_get(c, "rate")));
}

static int wait_campaign(const struct opts *o, json_int_t id)
{
	bool tty = isatty(STDERR_FILENO);
	double last = 0;
	for (;;) {
		json_t *r = call(o, json_pack("{sssI}", "op", "status", "id", id));
		if (!r)
			return 1;
		json_t *c = json_array_get(json_object_get(r, "campaigns"), 0);
		const char *st = json_string_value(json_object_get(c, "state"));
		bool fin = st && (strcmp(st, "done") == 0 ||
			strcmp(st, "cancelled") == 0);
		if (!o->quiet)
			progress(c, tty, &last, fin);
		if (fin) {
			if (!o->quiet) {
				if (tty)
					fputc('\n', stderr);
				summary(c);
			}
			int rc = strcmp(st, "done") == 0 ? 0 : 1;
			json_decref(r);
			return rc;
		}
		json_decref(r);
		usleep(200000);
	}
}

static int cmd_submit(const struct opts *o)
{
	if (o->nargs != 1) {
		fprintf(stderr, "usage: carteiro submit [-s SOCKET] CAMPAIGN.json "
			"[--wait]\n");
		return 2;
	}
	json_error_t je;
	json_t *camp = json_load_file(o->args[0], JSON_REJECT_DUPLICATES, &je);
	if (!camp) {
		fprintf(stderr, "carteiro: %s:%d:%d: %s\n", o->args[0], je.line,
			je.column, je.text);
		return 1;
	}
	/* Relative paths in the campaign are relative to its file. */
	char real[PATH_MAX];
	if (!realpath(o->args[0], real)) {
		fprintf(stderr, "carteiro: %s: %s\n", o->args[0], strerror(errno));
		json_decref(camp);
		return 1;
	}
	json_t *r = call(o, json_pack("{sssoss}", "op", "submit", "campaign",
		camp, "base_dir", dirname(real)));
	if (!r)
		return 1;
	json_int_t id = geti(r, "id");
	printf("%" JSON_INTEGER_FORMAT "\n", id);
	fflush(stdout);
	json_t *w = json_object_get(r, "warnings");
	size_t i;
	json_t *x;
	json_array_foreach(w, i, x)
		fprintf(stderr, "carteiro: skipped %s: %s\n",
			json_string_value(json_object_get(x, "where")),
			json_string_value(json_object_get(x, "message")));
	if (geti(r, "skipped") > (json_int_t)json_array_size(w))
		fprintf(stderr, "carteiro: %" JSON_INTEGER_FORMAT " contacts "
			"skipped in all\n", geti(r, "skipped"));
	json_decref(r);
	return o->wait ? wait_campaign(o, id) : 0;
}

/* ---- status ---- */

static int cmd_status(const struct opts *o)
{
	json_t *req = json_pack("{ss}", "op", "status");
	if (o->nargs > 0)
		json_object_set_new(req, "id", json_string(o->args[0]));
	if (o->sites)
		json_object_set_new(req, "sites", json_true());
	if (o->bounces)
		json_object_set_new(req, "bounces", json_true());
	json_t *r = call(o, req);
	if (!r)
		return 1;
	if (o->json) {
		print_json(r);
		json_decref(r);
		return 0;
	}
	json_t *e = json_object_get(r, "engine");
	printf("engine: up %.0f s, %" JSON_INTEGER_FORMAT " in flight, %"
		JSON_INTEGER_FORMAT " connections, spool %" JSON_INTEGER_FORMAT
		" bytes\n", json_real_value(json_object_get(e, "uptime")),
		geti(e, "inflight"), geti(e, "connections"),
		geti(e, "spool_bytes"));
	json_t *wa = json_object_get(e, "whatsapp");
	if (wa)
		printf("whatsapp: %s, %" JSON_INTEGER_FORMAT " sent, %"
			JSON_INTEGER_FORMAT " failed, %" JSON_INTEGER_FORMAT
			" retried\n", json_string_value(json_object_get(wa, "state")),
			geti(wa, "sent"), geti(wa, "failed"), geti(wa, "retried"));
	printf("%-6s %-24s %-10s %9s %9s %9s %8s %8s %9s %9s\n", "ID", "NAME",
		"STATE", "TOTAL", "RENDERED", "DELIVERED", "BOUNCED", "EXPIRED",
		"DEFERRALS", "PENDING");
	size_t i;
	json_t *c;
	json_array_foreach(json_object_get(r, "campaigns"), i, c)
		printf("%-6" JSON_INTEGER_FORMAT " %-24.24s %-10s %9"
			JSON_INTEGER_FORMAT " %9" JSON_INTEGER_FORMAT " %9"
			JSON_INTEGER_FORMAT " %8" JSON_INTEGER_FORMAT " %8"
			JSON_INTEGER_FORMAT " %9" JSON_INTEGER_FORMAT " %9"
			JSON_INTEGER_FORMAT "\n", geti(c, "id"),
			json_string_value(json_object_get(c, "name")),
			json_string_value(json_object_get(c, "state")),
			geti(c, "total"), geti(c, "rendered"), geti(c, "delivered"),
			geti(c, "bounced"), geti(c, "expired"), geti(c, "deferrals"),
			geti(c, "pending"));
	json_array_foreach(json_object_get(r, "campaigns"), i, c) {
		json_t *br = json_object_get(c, "bounce_report");
		if (!br)
			continue;
		printf("\nbounces of campaign %" JSON_INTEGER_FORMAT ":\n",
			geti(c, "id"));
		const char *k;
		json_t *v;
		json_object_foreach(json_object_get(br, "categories"), k, v)
			printf("  %-14s %" JSON_INTEGER_FORMAT "\n", k,
				json_integer_value(v));
		size_t j;
		json_t *x;
		json_array_foreach(json_object_get(br, "top_replies"), j, x)
			printf("  %6" JSON_INTEGER_FORMAT "  %.100s\n", geti(x, "count"),
				json_string_value(json_object_get(x, "reply")));
	}
	json_t *sites = json_object_get(e, "sites");
	if (sites) {
		printf("\n%-32s %7s %7s %9s %8s %-30s %s\n", "SITE", "CONNS",
			"QUEUED", "RATE", "SENT", "DOMAINS", "STATE");
		json_array_foreach(sites, i, c) {
			char *d = json_dumps(json_object_get(c, "domains"),
				JSON_COMPACT);
			char conns[32];
			snprintf(conns, sizeof conns, "%" JSON_INTEGER_FORMAT "/%"
				JSON_INTEGER_FORMAT, geti(c, "connections"),
				geti(c, "max_connections"));
			const char *rate = json_string_value(json_object_get(c,
				"rate"));
			printf("%-32.32s %7s %7" JSON_INTEGER_FORMAT " %9s %8"
				JSON_INTEGER_FORMAT " %-30.30s %s",
				json_string_value(json_object_get(c, "site")), conns,
				geti(c, "queued"), rate && strcmp(rate, "0") ? rate : "-",
				geti(c, "sent"), d,
				json_string_value(json_object_get(c, "state")));
			json_t *wu = json_object_get(c, "warmup");
			if (wu)
				printf(" (warm-up day %" JSON_INTEGER_FORMAT ": %"
					JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT ")",
					geti(wu, "day"), geti(wu, "sent_today"),
					geti(wu, "cap"));
			putchar('\n');
			free(d);
		}
	}
	json_decref(r);
	return 0;
}

static int cmd_simple(const struct opts *o, const char *op)
{
	if (o->nargs != 1) {
		fprintf(stderr, "usage: carteiro %s CAMPAIGN_ID\n", op);
		return 2;
	}
	json_t *r = call(o, json_pack("{ssss}", "op", op, "id", o->args[0]));
	if (!r)
		return 1;
	printf("campaign %" JSON_INTEGER_FORMAT ": %s (%" JSON_INTEGER_FORMAT
		" messages)\n", geti(r, "id"),
		json_string_value(json_object_get(r, "state")),
		geti(r, "messages"));
	json_decref(r);
	return 0;
}

static int cmd_suppress(const struct opts *o)
{
	if (o->nargs < 1) {
		fprintf(stderr, "usage: carteiro suppress add|remove ADDRESS | "
			"list\n");
		return 2;
	}
	json_t *req = json_pack("{ssss}", "op", "suppress", "action",
		o->args[0]);
	if (o->nargs > 1)
		json_object_set_new(req, "address", json_string(o->args[1]));
	if (o->reason)
		json_object_set_new(req, "reason", json_string(o->reason));
	json_t *r = call(o, req);
	if (!r)
		return 1;
	if (strcmp(o->args[0], "list") == 0 && !o->json) {
		size_t i;
		json_t *x;
		json_array_foreach(json_object_get(r, "suppressed"), i, x)
			printf("%s\t%s\n", json_string_value(json_object_get(x,
				"address")), json_string_value(json_object_get(x,
				"reason")));
	} else {
		print_json(r);
	}
	json_decref(r);
	return 0;
}

static int cmd_queue(const struct opts *o)
{
	if (o->nargs < 1) {
		fprintf(stderr, "usage: carteiro queue list|show|retry|delete "
			"...\n");
		return 2;
	}
	json_t *req = json_pack("{ssss}", "op", "queue", "action", o->args[0]);
	if (o->campaign)
		json_object_set_new(req, "campaign", json_string(o->campaign));
	if (o->domain)
		json_object_set_new(req, "domain", json_string(o->domain));
	if (o->state)
		json_object_set_new(req, "state", json_string(o->state));
	const char *msg = o->msg ? o->msg : o->nargs > 1 ? o->args[1] : NULL;
	if (msg)
		json_object_set_new(req, "msg", json_string(msg));
	if (o->limit > 0)
		json_object_set_new(req, "limit", json_integer(o->limit));
	json_t *r = call(o, req);
	if (!r)
		return 1;
	if (strcmp(o->args[0], "list") == 0 && !o->json) {
		size_t i;
		json_t *m;
		printf("%-17s %-10s %4s %-40s %s\n", "MSG", "STATE", "TRY",
			"RECIPIENT", "LAST REPLY");
		json_array_foreach(json_object_get(r, "messages"), i, m)
			printf("%-17s %-10s %4" JSON_INTEGER_FORMAT " %-40.40s %.60s\n",
				json_string_value(json_object_get(m, "msg")),
				json_string_value(json_object_get(m, "state")),
				geti(m, "attempts"),
				json_string_value(json_object_get(m, "rcpt")),
				json_string_value(json_object_get(m, "reply")) ?: "");
		printf("%" JSON_INTEGER_FORMAT " matched\n", geti(r, "matched"));
	} else if (strcmp(o->args[0], "show") == 0 && !o->json) {
		printf("message:  %s\ncampaign: %" JSON_INTEGER_FORMAT
			"\nrcpt:     %s\nstate:    %s\nattempts: %" JSON_INTEGER_FORMAT
			"\nreply:    %s\n\n%s",
			json_string_value(json_object_get(r, "msg")),
			geti(r, "campaign"),
			json_string_value(json_object_get(r, "rcpt")),
			json_string_value(json_object_get(r, "state")),
			geti(r, "attempts"),
			json_string_value(json_object_get(r, "reply")),
			json_string_value(json_object_get(r, "headers")) ?: "");
	} else {
		print_json(r);
	}
	json_decref(r);
	return 0;
}

static int cmd_config(const struct opts *o)
{
	const char *a = o->nargs ? o->args[0] : "";
	if (strcmp(a, "reload") == 0) {
		json_t *r = call(o, json_pack("{ssss}", "op", "config", "action",
			"reload"));
		if (!r)
			return 1;
		printf("reloaded %s\n", json_string_value(json_object_get(r,
			"reloaded")));
		json_decref(r);
		return 0;
	}
	if (strcmp(a, "check") && strcmp(a, "show")) {
		fprintf(stderr, "usage: carteiro config check|show [-c FILE] | "
			"reload\n");
		return 2;
	}
	struct cf cf;
	if (load_config(o, &cf) < 0) {
		cf_free(&cf);
		return 1;
	}
	if (a[0] == 'c') {
		printf("%s: ok\n", o->config ? o->config : "(embedded defaults)");
	} else {
		buf_t b = BUF_INIT;
		cf_show(&cf, &b);
		fputs(buf_cstr(&b), stdout);
		buf_free(&b);
	}
	cf_free(&cf);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	struct opts o;
	parse_opts(argc - 1, argv + 1, &o);
	int rc;
	if (strcmp(cmd, "serve") == 0)
		rc = cmd_serve(&o);
	else if (strcmp(cmd, "submit") == 0)
		rc = cmd_submit(&o);
	else if (strcmp(cmd, "status") == 0)
		rc = cmd_status(&o);
	else if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0 ||
	    strcmp(cmd, "cancel") == 0)
		rc = cmd_simple(&o, cmd);
	else if (strcmp(cmd, "suppress") == 0)
		rc = cmd_suppress(&o);
	else if (strcmp(cmd, "queue") == 0)
		rc = cmd_queue(&o);
	else if (strcmp(cmd, "config") == 0)
		rc = cmd_config(&o);
	else if (strcmp(cmd, "stop") == 0) {
		json_t *r = call(&o, json_pack("{ss}", "op", "stop"));
		rc = r ? 0 : 1;
		json_decref(r);
	} else if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 ||
	    strcmp(cmd, "-h") == 0) {
		usage(stdout);
		rc = 0;
	} else {
		fprintf(stderr, "carteiro: unknown command \"%s\"\n", cmd);
		usage(stderr);
		rc = 2;
	}
	free(o.overrides);
	return rc;
}
