/*
 * carteiro-sink — a fast SMTP receiver for tests and benches, with
 * deterministic fault injection.
 *
 * One process, one libev loop. Each listener (-l ADDR:PORT[,opt=val...])
 * carries its own behaviour options and its own counters. Each connection
 * owns its watchers, its input line buffer and its output buffer; replies to a
 * pipelined group are collected in the output buffer and written together
 * once the input read in one go has been processed. DATA content is streamed
 * through the dot-unstuffing decoder (bench/dotstuff.h) and held in memory
 * only when the message is to be saved (--save), bounded by maxsize.
 *
 * Faults are decided by configuration and by hashes of addresses, never by
 * chance, so a test run is reproducible. The sink must not crash on anything a
 * client sends: lines are bounded (4 KB, else 500), recipients per message are
 * bounded, message size is bounded.
 *
 * Stats (see bench/README.md for the JSON shape) are written on SIGUSR1, on
 * SIGTERM/SIGINT (then exit 0) and every --stats-interval seconds.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "bench/dotstuff.h"
#include "engine/buf.h"
#include "engine/log.h"
#include "engine/mem.h"

#define LINE_MAX_BYTES 4096
#define MAX_RCPTS 1000
#define READ_CHUNK 65536
/* Stop reading while this much output waits: a client that pipelines without
 * reading replies cannot grow our memory without bound. */
#define OUT_HIGH_WATER (256 * 1024)
#define HIST_MAX_SECONDS (7 * 86400)

enum stage { STG_NONE = 0, STG_GREET, STG_EHLO, STG_MAIL, STG_RCPT, STG_DATA, STG_DOT };
static const char *const stage_names[] = {
	"none", "greet", "ehlo", "mail", "rcpt", "data", "dot",
};

/* Behaviour of one listener (global defaults are copied then overridden). */
struct opts {
	unsigned defer, bounce;     /* percent of recipients */
	unsigned greet;             /* banner code, 0 = 220 */
	enum stage fail_stage;
	unsigned fail_code;
	unsigned fail_count;        /* only the first N times (0 = always) */
	unsigned after;             /* messages per connection, 0 = no limit */
	unsigned delay_ms;
	int split;
	size_t huge;                /* EHLO reply bytes */
	enum stage silent;
	int drop_data;
	int tls_fail, notls, nopipelining;
	uint64_t maxsize;
	unsigned maxconn;
	char name[64];
};

struct dom {
	char *name;
	uint64_t count;
};

struct listener {
	struct sink *sink;
	ev_io io;
	int fd;
	char addr[80];
	struct opts o;
	/* counters */
	uint64_t messages, recipients, rcpt_deferred, rcpt_bounced, rejected;
	uint64_t conn_total, conn_refused;
	uint64_t conn_quit;      /* sessions the client ended with QUIT */
	unsigned conn_current, conn_peak;
	uint64_t tls_handshakes, tls_resumed, tls_failed;
	uint64_t bytes;
	struct dom *doms;
	size_t ndom, domcap;        /* open addressing, domcap power of 2 */
	uint32_t *hist;             /* per-second counts since sink start */
	size_t histcap;
	uint64_t fail_used;         /* injected failures given (fail=...:N) */
	struct client *clients;     /* per client address: connections */
	size_t nclients;
};

/* Connections seen from one client address (an engine's source IP). */
struct client {
	char addr[64];
	uint64_t total;
	unsigned current, peak;
};

enum conn_state { CS_CMD = 0, CS_DATA, CS_TLS, CS_SILENT, CS_CLOSING, CS__COUNT };
static const char *const conn_state_names[CS__COUNT] = {
	"cmd", "data", "tls", "silent", "closing",
};

struct conn {
	struct conn *next, *prev;   /* all connections, for teardown at exit */
	struct sink *sink;
	struct listener *l;
	size_t client;              /* index in l->clients */
	int fd;
	ev_io rio, wio;
	ev_timer delay;
	int delay_armed, delay_done;
	SSL *ssl;
	int tls_pending;            /* start the handshake once out is flushed */
	enum conn_state st;
	buf_t line;
	int line_overflow;
	buf_t out;
	int helo;
	int have_mail;
	buf_t from;
	buf_t rcpts;                /* NUL-separated */
	unsigned nrcpt;
	unsigned msgs;
	dot_t dot;
	int saving;
	buf_t msg;
	int too_big;
};

struct sink {
	struct ev_loop *loop;
	struct listener **ls;
	size_t nls;
	SSL_CTX *tls;
	const char *save_dir;
	unsigned save_sample;
	uint64_t save_seq, saved;
	uint64_t stats_seq;         /* bumps on every stats write */
	const char *stats_file;
	double stats_interval;
	ev_timer stats_timer;
	ev_signal sig_usr1, sig_term, sig_int;
	time_t start;
	struct conn *conns;
	uint64_t *deferred;         /* set of address hashes, 0 = empty */
	size_t ndeferred, defcap;
	char iobuf[READ_CHUNK];
};

static void conn_free(struct conn *c);
static void conn_set_state(struct conn *c, enum conn_state st);
static void conn_flush(struct conn *c);
static void conn_update(struct conn *c);

/* ---------- small helpers ---------- */

static uint64_t
hash_addr(const char *s, uint64_t seed)
{
	uint64_t h = 1469598103934665603ULL ^ seed;
	for (; *s; s++) {
		h ^= (unsigned char)tolower((unsigned char)*s);
		h *= 1099511628211ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

static void
conn_set_state(struct conn *c, enum conn_state st)
{
	log_debug("sink: conn fd=%d %s -> %s", c->fd, conn_state_names[c->st],
	    conn_state_names[st]);
	c->st = st;
}

static void
reply(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
reply(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&c->out, fmt, ap);
	va_end(ap);
	buf_adds(&c->out, "\r\n");
}

static void
reply_code(struct conn *c, unsigned code, const char *what)
{
	if (code == 421) {
		/* What throttling providers say, then they hang up. */
		reply(c, "421 4.7.0 Try again later, closing connection "
		    "(injected failure at %s)", what);
		conn_set_state(c, CS_CLOSING);
		return;
	}
	reply(c, "%u %u.0.0 injected failure at %s", code, code / 100, what);
}

/* Does the configured failure apply now? fail=STAGE:CODE:N fails only the
 * first N times on the listener. */
static int
fail_now(struct conn *c, enum stage st)
{
	struct listener *l = c->l;
	if (l->o.fail_stage != st)
		return 0;
	if (l->o.fail_count && l->fail_used >= l->o.fail_count)
		return 0;
	l->fail_used++;
	return 1;
}

/* ---------- counting ---------- */

static void
dom_count(struct listener *l, const char *dom)
{
	if (l->ndom * 10 >= l->domcap * 7) {
		size_t ncap = l->domcap ? l->domcap * 2 : 64;
		struct dom *n = mem_calloc(ncap, sizeof *n);
		for (size_t i = 0; i < l->domcap; i++) {
			if (l->doms[i].name == NULL)
				continue;
			size_t j = hash_addr(l->doms[i].name, 0) & (ncap - 1);
			while (n[j].name != NULL)
				j = (j + 1) & (ncap - 1);
			n[j] = l->doms[i];
		}
		free(l->doms);
		l->doms = n;
		l->domcap = ncap;
	}
	size_t j = hash_addr(dom, 0) & (l->domcap - 1);
	while (l->doms[j].name != NULL) {
		if (strcasecmp(l->doms[j].name, dom) == 0) {
			l->doms[j].count++;
			return;
		}
		j = (j + 1) & (l->domcap - 1);
	}
	char *d = mem_strdup(dom);
	for (char *p = d; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	l->doms[j].name = d;
	l->doms[j].count = 1;
	l->ndom++;
}

static void
hist_count(struct listener *l, time_t start)
{
	time_t now = time(NULL);
	size_t s = now > start ? (size_t)(now - start) : 0;
	if (s >= HIST_MAX_SECONDS)
		s = HIST_MAX_SECONDS - 1;
	if (s >= l->histcap) {
		size_t ocap = l->histcap;
		l->hist = mem_grow(l->hist, &l->histcap, s + 1, sizeof *l->hist);
		memset(l->hist + ocap, 0, (l->histcap - ocap) * sizeof *l->hist);
	}
	l->hist[s]++;
}

/* Returns 1 if the address was already deferred once (and records it). */
static int
deferred_seen(struct sink *s, uint64_t h)
{
	if (h == 0)
		h = 1;
	if (s->ndeferred * 10 >= s->defcap * 7) {
		size_t ncap = s->defcap ? s->defcap * 2 : 1024;
		uint64_t *n = mem_calloc(ncap, sizeof *n);
		for (size_t i = 0; i < s->defcap; i++) {
			if (s->deferred[i] == 0)
				continue;
			size_t j = s->deferred[i] & (ncap - 1);
			while (n[j] != 0)
				j = (j + 1) & (ncap - 1);
			n[j] = s->deferred[i];
		}
		free(s->deferred);
		s->deferred = n;
		s->defcap = ncap;
	}
	size_t j = h & (s->defcap - 1);
	while (s->deferred[j] != 0) {
		if (s->deferred[j] == h)
			return 1;
		j = (j + 1) & (s->defcap - 1);
	}
	s->deferred[j] = h;
	s->ndeferred++;
	return 0;
}

/* ---------- stats ---------- */

static void
json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void
stats_write(struct sink *s)
{
	if (s->stats_file == NULL)
		return;
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", s->stats_file);
	FILE *f = fopen(tmp, "w");
	if (f == NULL) {
		log_err("sink: stats: %s: %s", tmp, strerror(errno));
		return;
	}
	uint64_t msgs = 0, rcpts = 0;
	for (size_t i = 0; i < s->nls; i++) {
		msgs += s->ls[i]->messages;
		rcpts += s->ls[i]->recipients;
	}
	s->stats_seq++;
	fprintf(f, "{\"seq\":%llu,\"start\":%lld,\"now\":%lld,\"messages\":%llu,\"recipients\":%llu,"
	    "\"saved\":%llu,\"listeners\":[",
	    (unsigned long long)s->stats_seq, (long long)s->start, (long long)time(NULL), (unsigned long long)msgs,
	    (unsigned long long)rcpts, (unsigned long long)s->saved);
	for (size_t i = 0; i < s->nls; i++) {
		struct listener *l = s->ls[i];
		fprintf(f, "%s{\"name\":", i ? "," : "");
		json_str(f, l->o.name);
		fprintf(f, ",\"address\":");
		json_str(f, l->addr);
		fprintf(f, ",\"messages\":%llu,\"recipients\":%llu,\"bytes\":%llu,"
		    "\"rcpt_deferred\":%llu,\"rcpt_bounced\":%llu,\"rejected\":%llu,"
		    "\"connections\":{\"total\":%llu,\"current\":%u,\"peak\":%u,"
		    "\"refused_maxconn\":%llu,\"quit\":%llu},"
		    "\"tls\":{\"handshakes\":%llu,\"resumed\":%llu,\"failed\":%llu},"
		    "\"domains\":{",
		    (unsigned long long)l->messages, (unsigned long long)l->recipients,
		    (unsigned long long)l->bytes,
		    (unsigned long long)l->rcpt_deferred, (unsigned long long)l->rcpt_bounced,
		    (unsigned long long)l->rejected,
		    (unsigned long long)l->conn_total, l->conn_current, l->conn_peak,
		    (unsigned long long)l->conn_refused,
		    (unsigned long long)l->conn_quit,
		    (unsigned long long)l->tls_handshakes, (unsigned long long)l->tls_resumed,
		    (unsigned long long)l->tls_failed);
		int first = 1;
		for (size_t j = 0; j < l->domcap; j++) {
			if (l->doms[j].name == NULL)
				continue;
			if (!first)
				fputc(',', f);
			first = 0;
			json_str(f, l->doms[j].name);
			fprintf(f, ":%llu", (unsigned long long)l->doms[j].count);
		}
		fprintf(f, "},\"injected_failures\":%llu,\"clients\":{",
		    (unsigned long long)l->fail_used);
		for (size_t j = 0; j < l->nclients; j++) {
			fprintf(f, "%s", j ? "," : "");
			json_str(f, l->clients[j].addr);
			fprintf(f, ":{\"total\":%llu,\"current\":%u,\"peak\":%u}",
			    (unsigned long long)l->clients[j].total, l->clients[j].current,
			    l->clients[j].peak);
		}
		fprintf(f, "},\"per_second\":[");
		first = 1;
		for (size_t j = 0; j < l->histcap; j++) {
			if (l->hist[j] == 0)
				continue;
			fprintf(f, "%s[%zu,%u]", first ? "" : ",", j, l->hist[j]);
			first = 0;
		}
		fprintf(f, "]}");
	}
	fprintf(f, "]}\n");
	if (fclose(f) != 0 || rename(tmp, s->stats_file) != 0)
		log_err("sink: stats: %s: %s", s->stats_file, strerror(errno));
}

/* ---------- saving ---------- */

static void
save_message(struct conn *c)
{
	struct sink *s = c->sink;
	char path[4096];
	snprintf(path, sizeof path, "%s/%s-%llu.eml", s->save_dir, c->l->o.name,
	    (unsigned long long)c->l->messages);
	buf_t h = BUF_INIT;
	buf_printf(&h, "X-Sink-Envelope: MAIL FROM:<%s>\r\n", buf_cstr(&c->from));
	const char *r = c->rcpts.p;
	for (unsigned i = 0; i < c->nrcpt; i++) {
		buf_printf(&h, "X-Sink-Envelope: RCPT TO:<%s>\r\n", r);
		r += strlen(r) + 1;
	}
	buf_printf(&h, "X-Sink-Envelope: listener=%s tls=%s\r\n", c->l->o.name,
	    c->ssl ? "yes" : "no");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		log_err("sink: save: %s: %s", path, strerror(errno));
		buf_free(&h);
		return;
	}
	struct { const char *p; size_t n; } parts[2] = {
		{ h.p, h.len }, { c->msg.p, c->msg.len },
	};
	for (int i = 0; i < 2; i++) {
		size_t off = 0;
		while (off < parts[i].n) {
			ssize_t w = write(fd, parts[i].p + off, parts[i].n - off);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				log_err("sink: save: %s: %s", path, strerror(errno));
				break;
			}
			off += (size_t)w;
		}
	}
	close(fd);
	buf_free(&h);
	s->saved++;
}

/* ---------- SMTP ---------- */

static void
envelope_reset(struct conn *c)
{
	c->have_mail = 0;
	c->nrcpt = 0;
	buf_reset(&c->from);
	buf_reset(&c->rcpts);
}

/* Extract the address between < and > after "FROM:" / "TO:". */
static int
parse_path(const char *arg, buf_t *out, const char **rest)
{
	while (*arg == ' ')
		arg++;
	const char *lt = strchr(arg, '<');
	if (lt == NULL)
		return -1;
	const char *gt = strchr(lt, '>');
	if (gt == NULL)
		return -1;
	buf_reset(out);
	buf_add(out, lt + 1, (size_t)(gt - lt - 1));
	if (rest != NULL)
		*rest = gt + 1;
	return 0;
}

static void
go_silent(struct conn *c)
{
	conn_set_state(c, CS_SILENT);
}

static void
cmd_ehlo(struct conn *c, const char *arg, int ehlo)
{
	const struct opts *o = &c->l->o;
	if (o->silent == STG_EHLO) {
		go_silent(c);
		return;
	}
	if (ehlo && fail_now(c, STG_EHLO)) {
		reply_code(c, o->fail_code, "ehlo");
		return;
	}
	envelope_reset(c);
	c->helo = 1;
	if (!ehlo) {
		reply(c, "250 carteiro-sink");
		return;
	}
	reply(c, "250-carteiro-sink greets %.64s", *arg ? arg : "you");
	if (o->huge > 0) {
		/* Filler lines of 76 bytes each until the requested size. */
		size_t start = c->out.len;
		while (c->out.len - start < o->huge)
			buf_adds(&c->out,
			    "250-X-FILLER-0123456789012345678901234567890123456789012345678901234567\r\n");
	}
	if (!o->nopipelining)
		reply(c, "250-PIPELINING");
	if (o->maxsize)
		reply(c, "250-SIZE %llu", (unsigned long long)o->maxsize);
	reply(c, "250-8BITMIME");
	reply(c, "250-SMTPUTF8");
	if (c->sink->tls != NULL && !o->notls && c->ssl == NULL)
		reply(c, "250-STARTTLS");
	reply(c, "250 ENHANCEDSTATUSCODES");
}

static void
cmd_mail(struct conn *c, const char *arg)
{
	const struct opts *o = &c->l->o;
	const char *rest = NULL;
	if (!c->helo) {
		reply(c, "503 5.5.1 EHLO first");
		return;
	}
	if (o->after && c->msgs >= o->after) {
		reply(c, "421 4.7.0 too many messages on this connection");
		conn_set_state(c, CS_CLOSING);
		return;
	}
	if (c->have_mail) {
		reply(c, "503 5.5.1 nested MAIL");
		return;
	}
	if (strncasecmp(arg, "FROM:", 5) != 0 || parse_path(arg + 5, &c->from, &rest) < 0) {
		reply(c, "501 5.5.4 syntax: MAIL FROM:<address>");
		return;
	}
	if (o->silent == STG_MAIL) {
		go_silent(c);
		return;
	}
	if (fail_now(c, STG_MAIL)) {
		reply_code(c, o->fail_code, "mail");
		return;
	}
	const char *sz = strcasestr(rest, "SIZE=");
	if (sz != NULL && o->maxsize && strtoull(sz + 5, NULL, 10) > o->maxsize) {
		reply(c, "552 5.3.4 message size exceeds limit");
		return;
	}
	c->have_mail = 1;
	reply(c, "250 2.1.0 Ok");
}

static void
cmd_rcpt(struct conn *c, const char *arg)
{
	struct listener *l = c->l;
	const struct opts *o = &l->o;
	buf_t a = BUF_INIT;
	if (!c->have_mail) {
		reply(c, "503 5.5.1 MAIL first");
		return;
	}
	if (strncasecmp(arg, "TO:", 3) != 0 || parse_path(arg + 3, &a, NULL) < 0) {
		reply(c, "501 5.5.4 syntax: RCPT TO:<address>");
		goto done;
	}
	if (o->silent == STG_RCPT) {
		go_silent(c);
		goto done;
	}
	if (fail_now(c, STG_RCPT)) {
		reply_code(c, o->fail_code, "rcpt");
		goto done;
	}
	if (c->nrcpt >= MAX_RCPTS) {
		reply(c, "452 4.5.3 too many recipients");
		goto done;
	}
	const char *addr = buf_cstr(&a);
	if (o->bounce && hash_addr(addr, 0xb0) % 100 < o->bounce) {
		l->rcpt_bounced++;
		reply(c, "550 5.1.1 <%s>: no such user (injected)", addr);
		goto done;
	}
	if (o->defer && hash_addr(addr, 0xde) % 100 < o->defer &&
	    !deferred_seen(c->sink, hash_addr(addr, 0xde))) {
		l->rcpt_deferred++;
		reply(c, "451 4.7.1 <%s>: try again later (injected)", addr);
		goto done;
	}
	buf_add(&c->rcpts, a.p, a.len + 1);
	c->nrcpt++;
	reply(c, "250 2.1.5 Ok");
done:
	buf_free(&a);
}

static void
cmd_data(struct conn *c)
{
	struct sink *s = c->sink;
	const struct opts *o = &c->l->o;
	if (!c->have_mail) {
		reply(c, "503 5.5.1 MAIL first");
		return;
	}
	if (c->nrcpt == 0) {
		reply(c, "554 5.5.1 no valid recipients");
		return;
	}
	if (o->silent == STG_DATA) {
		go_silent(c);
		return;
	}
	if (fail_now(c, STG_DATA)) {
		reply_code(c, o->fail_code, "data");
		return;
	}
	reply(c, "354 End data with <CR><LF>.<CR><LF>");
	dot_reset(&c->dot);
	buf_reset(&c->msg);
	c->too_big = 0;
	c->saving = 0;
	if (s->save_dir != NULL) {
		s->save_seq++;
		c->saving = s->save_sample <= 1 || s->save_seq % s->save_sample == 0;
	}
	conn_set_state(c, CS_DATA);
}

static void
data_done(struct conn *c)
{
	struct listener *l = c->l;
	const struct opts *o = &l->o;
	conn_set_state(c, CS_CMD);
	if (c->too_big || (o->maxsize && c->dot.bytes > o->maxsize)) {
		l->rejected++;
		reply(c, "552 5.3.4 message size exceeds limit");
	} else if (o->silent == STG_DOT) {
		go_silent(c);
		return;
	} else if (fail_now(c, STG_DOT)) {
		l->rejected++;
		reply_code(c, o->fail_code, "dot");
	} else {
		l->messages++;
		l->recipients += c->nrcpt;
		l->bytes += c->dot.bytes;
		const char *r = c->rcpts.p;
		for (unsigned i = 0; i < c->nrcpt; i++) {
			const char *at = strrchr(r, '@');
			dom_count(l, at ? at + 1 : "");
			r += strlen(r) + 1;
		}
		hist_count(l, c->sink->start);
		if (c->saving)
			save_message(c);
		c->msgs++;
		reply(c, "250 2.0.0 Ok: queued as %llu", (unsigned long long)l->messages);
	}
	envelope_reset(c);
	buf_reset(&c->msg);
	if (c->msg.cap > 1 << 20) {
		buf_free(&c->msg);  /* do not keep a huge buffer per idle connection */
	}
}

static void
cmd_line(struct conn *c, char *line)
{
	size_t n = strlen(line);
	while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == '\n'))
		line[--n] = '\0';
	char *arg = line;
	while (*arg && *arg != ' ')
		arg++;
	size_t vlen = (size_t)(arg - line);
	while (*arg == ' ')
		arg++;
#define IS(v) (vlen == sizeof(v) - 1 && strncasecmp(line, v, vlen) == 0)
	if (IS("EHLO"))
		cmd_ehlo(c, arg, 1);
	else if (IS("HELO"))
		cmd_ehlo(c, arg, 0);
	else if (IS("MAIL"))
		cmd_mail(c, arg);
	else if (IS("RCPT"))
		cmd_rcpt(c, arg);
	else if (IS("DATA"))
		cmd_data(c);
	else if (IS("RSET")) {
		envelope_reset(c);
		reply(c, "250 2.0.0 Ok");
	} else if (IS("NOOP"))
		reply(c, "250 2.0.0 Ok");
	else if (IS("VRFY"))
		reply(c, "252 2.0.0 cannot VRFY, but will accept");
	else if (IS("HELP"))
		reply(c, "214 2.0.0 carteiro-sink");
	else if (IS("QUIT")) {
		c->l->conn_quit++;
		reply(c, "221 2.0.0 Bye");
		conn_set_state(c, CS_CLOSING);
	} else if (IS("STARTTLS")) {
		if (c->sink->tls == NULL || c->l->o.notls)
			reply(c, "454 4.7.0 TLS not available");
		else if (c->ssl != NULL)
			reply(c, "503 5.5.1 TLS already active");
		else {
			reply(c, "220 2.0.0 Ready to start TLS");
			if (c->l->o.tls_fail) {
				c->l->tls_failed++;
				conn_set_state(c, CS_CLOSING);
			} else {
				c->tls_pending = 1;
				conn_set_state(c, CS_TLS);
			}
		}
	} else
		reply(c, "500 5.5.2 command not recognized");
#undef IS
}

/* Process input bytes; stops early when the state no longer takes input. */
static void
conn_input(struct conn *c, const char *p, size_t n)
{
	while (n > 0) {
		if (c->st == CS_DATA) {
			if (c->l->o.drop_data) {
				conn_set_state(c, CS_CLOSING);
				buf_reset(&c->out);
				return;
			}
			int done = 0;
			uint64_t limit = c->l->o.maxsize ? c->l->o.maxsize : (64u << 20);
			buf_t *out = (c->saving && !c->too_big) ? &c->msg : NULL;
			size_t k = dot_feed(&c->dot, p, n, out, &done);
			if (c->dot.bytes > limit && !c->too_big) {
				c->too_big = 1;
				buf_free(&c->msg);
			}
			p += k;
			n -= k;
			if (done)
				data_done(c);
			continue;
		}
		if (c->st != CS_CMD)
			return;
		const char *lf = memchr(p, '\n', n);
		size_t k = lf ? (size_t)(lf - p) + 1 : n;
		if (!c->line_overflow) {
			if (c->line.len + k > LINE_MAX_BYTES) {
				c->line_overflow = 1;
				buf_reset(&c->line);
			} else
				buf_add(&c->line, p, k);
		}
		p += k;
		n -= k;
		if (lf == NULL)
			return;
		if (c->line_overflow) {
			c->line_overflow = 0;
			reply(c, "500 5.5.0 line too long");
			continue;
		}
		cmd_line(c, c->line.p);
		buf_reset(&c->line);
	}
}

/* ---------- I/O ---------- */

/* Advance the handshake; returns -1 if the connection was freed. */
static int
tls_step(struct conn *c)
{
	ERR_clear_error();
	int r = SSL_accept(c->ssl);
	if (r == 1) {
		c->l->tls_handshakes++;
		if (SSL_session_reused(c->ssl))
			c->l->tls_resumed++;
		c->helo = 0;
		envelope_reset(c);
		conn_set_state(c, CS_CMD);
		conn_update(c);
		return 0;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		ev_io_stop(c->sink->loop, &c->wio);
		if (e == SSL_ERROR_WANT_WRITE)
			ev_io_start(c->sink->loop, &c->wio);
		return 0;
	}
	c->l->tls_failed++;
	log_debug("sink: TLS handshake failed on fd %d", c->fd);
	conn_free(c);
	return -1;
}

static int
tls_start(struct conn *c)
{
	c->tls_pending = 0;
	c->ssl = SSL_new(c->sink->tls);
	SSL_set_fd(c->ssl, c->fd);
	SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	buf_reset(&c->line);
	return tls_step(c);
}

/* Write pending output; returns -1 if the connection was freed. */
static int
conn_write(struct conn *c)
{
	size_t want = c->l->o.split ? 1 : c->out.len;
	while (c->out.len > 0) {
		ssize_t w;
		if (c->ssl != NULL) {
			ERR_clear_error();
			int r = SSL_write(c->ssl, c->out.p, (int)(want > 1 << 30 ? 1 << 30 : want));
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
					break;
				conn_free(c);
				return -1;
			}
			w = r;
		} else {
			w = send(c->fd, c->out.p, want, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				conn_free(c);
				return -1;
			}
		}
		buf_consume(&c->out, (size_t)w);
		if (c->l->o.split)
			break;  /* one byte per loop iteration: the write watcher resumes */
	}
	if (c->out.len == 0) {
		c->delay_done = 0;
		if (c->st == CS_CLOSING) {
			conn_free(c);
			return -1;
		}
		if (c->tls_pending)
			return tls_start(c);
	}
	return 0;
}

/* Derive the watchers from the buffer state. */
static void
conn_update(struct conn *c)
{
	struct ev_loop *loop = c->sink->loop;
	int want_write = c->out.len > 0 && !c->delay_armed &&
	    (c->l->o.delay_ms == 0 || c->delay_done);
	if (want_write)
		ev_io_start(loop, &c->wio);
	else if (c->st != CS_TLS)
		ev_io_stop(loop, &c->wio);
	/* Stop reading while closing, so the peer sees our last reply first,
	 * and while much output is pending (back-pressure). */
	if (c->st == CS_CLOSING || c->out.len > OUT_HIGH_WATER)
		ev_io_stop(loop, &c->rio);
	else {
		ev_io_start(loop, &c->rio);
		/* Bytes OpenSSL already decrypted will not wake the fd watcher. */
		if (c->ssl != NULL && c->st == CS_CMD && SSL_pending(c->ssl) > 0)
			ev_feed_event(loop, &c->rio, EV_READ);
	}
}

static void
conn_flush(struct conn *c)
{
	if (c->out.len == 0) {
		if (c->st == CS_CLOSING) {
			conn_free(c);
			return;
		}
		conn_update(c);
		return;
	}
	if (c->l->o.delay_ms && !c->delay_done) {
		if (!c->delay_armed) {
			c->delay_armed = 1;
			ev_timer_set(&c->delay, c->l->o.delay_ms / 1000.0, 0.);
			ev_timer_start(c->sink->loop, &c->delay);
		}
		conn_update(c);
		return;
	}
	if (!c->l->o.split && conn_write(c) < 0)
		return;
	if (c->st == CS_TLS && c->ssl != NULL)
		return;
	conn_update(c);
}

static void
delay_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct conn *c = w->data;
	c->delay_armed = 0;
	c->delay_done = 1;
	conn_flush(c);
}

static void
write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	struct conn *c = w->data;
	if (c->st == CS_TLS && c->ssl != NULL) {
		(void)tls_step(c);
		return;
	}
	if (conn_write(c) < 0)
		return;
	if (c->st == CS_TLS && c->ssl != NULL)
		return;
	conn_update(c);
}

static void
read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	struct conn *c = w->data;
	struct sink *s = c->sink;
	if (c->st == CS_TLS) {
		if (c->ssl != NULL)
			(void)tls_step(c);
		else {
			/* Input before the handshake starts is discarded (RFC 3207). */
			ssize_t r = recv(c->fd, s->iobuf, sizeof s->iobuf, 0);
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
				conn_free(c);
		}
		return;
	}
	for (int iter = 0; iter < 8; iter++) {
		ssize_t r;
		if (c->ssl != NULL) {
			ERR_clear_error();
			int k = SSL_read(c->ssl, s->iobuf, sizeof s->iobuf);
			if (k <= 0) {
				int e = SSL_get_error(c->ssl, k);
				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					break;
				conn_free(c);
				return;
			}
			r = k;
		} else {
			r = recv(c->fd, s->iobuf, sizeof s->iobuf, 0);
			if (r < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				conn_free(c);
				return;
			}
			if (r == 0) {
				conn_free(c);
				return;
			}
		}
		if (c->st != CS_SILENT)
			conn_input(c, s->iobuf, (size_t)r);
		if (c->st == CS_CLOSING || c->st == CS_TLS || c->out.len > OUT_HIGH_WATER)
			break;
		if ((size_t)r < sizeof s->iobuf && (c->ssl == NULL || SSL_pending(c->ssl) == 0))
			break;
	}
	conn_flush(c);
}

static void
conn_free(struct conn *c)
{
	struct ev_loop *loop = c->sink->loop;
	ev_io_stop(loop, &c->rio);
	ev_io_stop(loop, &c->wio);
	ev_timer_stop(loop, &c->delay);
	/* A pending fed event would find freed memory: clear it. */
	ev_clear_pending(loop, &c->rio);
	ev_clear_pending(loop, &c->wio);
	ev_clear_pending(loop, &c->delay);
	if (c->ssl != NULL)
		SSL_free(c->ssl);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		c->sink->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->l->conn_current--;
	c->l->clients[c->client].current--;
	buf_free(&c->line);
	buf_free(&c->out);
	buf_free(&c->from);
	buf_free(&c->rcpts);
	buf_free(&c->msg);
	free(c);
}

static size_t
client_get(struct listener *l, const struct sockaddr_storage *peer)
{
	char a[64] = "?";
	if (peer->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, a, sizeof a);
	else if (peer->ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, a, sizeof a);
	for (size_t i = 0; i < l->nclients; i++)
		if (strcmp(l->clients[i].addr, a) == 0)
			return i;
	l->clients = mem_realloc(l->clients, (l->nclients + 1) * sizeof *l->clients);
	struct client *c = &l->clients[l->nclients];
	memset(c, 0, sizeof *c);
	snprintf(c->addr, sizeof c->addr, "%s", a);
	return l->nclients++;
}

static void
accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct listener *l = w->data;
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof peer;
		int fd = accept4(l->fd, (struct sockaddr *)&peer, &plen,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("sink: accept on %s: %s", l->addr, strerror(errno));
			return;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		l->conn_total++;
		if (l->o.maxconn && l->conn_current >= l->o.maxconn) {
			l->conn_refused++;
			static const char msg[] = "421 4.7.0 too many connections\r\n";
			(void)!send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL);
			close(fd);
			continue;
		}
		struct conn *c = mem_calloc(1, sizeof *c);
		c->sink = l->sink;
		c->l = l;
		c->fd = fd;
		ev_io_init(&c->rio, read_cb, fd, EV_READ);
		ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
		ev_init(&c->delay, delay_cb);
		c->rio.data = c->wio.data = c->delay.data = c;
		c->next = l->sink->conns;
		if (c->next)
			c->next->prev = c;
		l->sink->conns = c;
		l->conn_current++;
		if (l->conn_current > l->conn_peak)
			l->conn_peak = l->conn_current;
		c->client = client_get(l, &peer);
		struct client *cl = &l->clients[c->client];
		cl->total++;
		if (++cl->current > cl->peak)
			cl->peak = cl->current;
		if (l->o.silent == STG_GREET) {
			conn_set_state(c, CS_SILENT);
		} else if (l->o.greet && l->o.greet != 220) {
			reply(c, "%u %u.3.2 service not available (injected)", l->o.greet,
			    l->o.greet / 100);
			conn_set_state(c, CS_CLOSING);
		} else
			reply(c, "220 carteiro-sink ESMTP");
		conn_flush(c);
		(void)loop;
	}
}

/* ---------- options ---------- */

static enum stage
stage_parse(const char *s, size_t n)
{
	for (size_t i = 1; i < sizeof stage_names / sizeof stage_names[0]; i++)
		if (strlen(stage_names[i]) == n && strncmp(stage_names[i], s, n) == 0)
			return (enum stage)i;
	return STG_NONE;
}

/* Apply one "key[=value]" option; -1 with a message in err if unknown. */
static int
opt_apply(struct opts *o, const char *kv, char *err, size_t errlen)
{
	const char *eq = strchr(kv, '=');
	size_t klen = eq ? (size_t)(eq - kv) : strlen(kv);
	const char *v = eq ? eq + 1 : "";
	char *end = NULL;
	unsigned long long num = strtoull(v, &end, 10);
	int numok = eq != NULL && *v != '\0' && *end == '\0';
#define K(name) (klen == sizeof(name) - 1 && strncmp(kv, name, klen) == 0)
	if (K("defer") && numok && num <= 100)
		o->defer = (unsigned)num;
	else if (K("bounce") && numok && num <= 100)
		o->bounce = (unsigned)num;
	else if (K("greet") && numok && num >= 200 && num < 600)
		o->greet = (unsigned)num;
	else if (K("fail") && eq) {
		const char *colon = strchr(v, ':');
		unsigned long code = colon ? strtoul(colon + 1, &end, 10) : 0;
		unsigned long count = 0;
		if (colon && *end == ':' && end[1])
			count = strtoul(end + 1, &end, 10);
		enum stage st = colon ? stage_parse(v, (size_t)(colon - v)) : STG_NONE;
		if (st == STG_NONE || st == STG_GREET || code < 400 || code > 599 || *end) {
			snprintf(err, errlen, "fail=%s: want STAGE:CODE[:COUNT], STAGE in "
			    "ehlo|mail|rcpt|data|dot, CODE 400-599", v);
			return -1;
		}
		o->fail_stage = st;
		o->fail_code = (unsigned)code;
		o->fail_count = (unsigned)count;
	} else if (K("after") && numok)
		o->after = (unsigned)num;
	else if (K("delay") && numok)
		o->delay_ms = (unsigned)num;
	else if (K("split") && !eq)
		o->split = 1;
	else if (K("huge") && numok)
		o->huge = (size_t)num;
	else if (K("silent") && eq && stage_parse(v, strlen(v)) != STG_NONE)
		o->silent = stage_parse(v, strlen(v));
	else if (K("drop") && eq && strcmp(v, "data") == 0)
		o->drop_data = 1;
	else if (K("tls") && eq && strcmp(v, "fail") == 0)
		o->tls_fail = 1;
	else if (K("notls") && !eq)
		o->notls = 1;
	else if (K("nopipelining") && !eq)
		o->nopipelining = 1;
	else if (K("maxsize") && numok)
		o->maxsize = num;
	else if (K("maxconn") && numok)
		o->maxconn = (unsigned)num;
	else if (K("name") && eq && *v && strlen(v) < sizeof o->name &&
	    strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == strlen(v))
		snprintf(o->name, sizeof o->name, "%s", v);
	else {
		snprintf(err, errlen, "unknown or invalid option '%s'", kv);
		return -1;
	}
#undef K
	return 0;
}

static int
listener_open(struct sink *s, const char *spec, const struct opts *defaults,
    char *err, size_t errlen)
{
	char *copy = mem_strdup(spec);
	char *save = NULL;
	char *addr = strtok_r(copy, ",", &save);
	struct listener *l = mem_calloc(1, sizeof *l);
	struct sockaddr_storage ss;
	socklen_t sl;
	memset(&ss, 0, sizeof ss);
	l->sink = s;
	l->fd = -1;
	l->o = *defaults;
	l->o.name[0] = '\0';
	if (addr == NULL)
		goto bad_addr;
	snprintf(l->addr, sizeof l->addr, "%s", addr);
	for (char *kv; (kv = strtok_r(NULL, ",", &save)) != NULL;)
		if (opt_apply(&l->o, kv, err, errlen) < 0)
			goto fail;
	char *colon = strrchr(addr, ':');
	if (colon == NULL)
		goto bad_addr;
	*colon = '\0';
	int port = atoi(colon + 1);
	char *host = addr;
	if (host[0] == '[') {
		host++;
		char *rb = strchr(host, ']');
		if (rb)
			*rb = '\0';
	}
	if (port <= 0 || port > 65535)
		goto bad_addr;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		sl = sizeof *sin;
	} else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		sl = sizeof *sin6;
	} else
		goto bad_addr;
	if (l->o.name[0] == '\0') {
		snprintf(l->o.name, sizeof l->o.name, "%s-%d", host, port);
		for (char *p = l->o.name; *p; p++)
			if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-')
				*p = '_';
	}
	l->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (l->fd < 0 ||
	    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(l->fd, (struct sockaddr *)&ss, sl) < 0 || listen(l->fd, 4096) < 0) {
		snprintf(err, errlen, "listen %s: %s", spec, strerror(errno));
		goto fail;
	}
	ev_io_init(&l->io, accept_cb, l->fd, EV_READ);
	l->io.data = l;
	ev_io_start(s->loop, &l->io);
	s->ls = mem_realloc(s->ls, (s->nls + 1) * sizeof *s->ls);
	s->ls[s->nls++] = l;
	free(copy);
	return 0;
bad_addr:
	snprintf(err, errlen, "-l %s: want ADDR:PORT (IPv6 as [ADDR]:PORT)", spec);
fail:
	if (l->fd >= 0)
		close(l->fd);
	free(l);
	free(copy);
	return -1;
}

/* ---------- main ---------- */

static void
stats_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	stats_write(w->data);
}

static void
signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)revents;
	struct sink *s = w->data;
	stats_write(s);
	if (w->signum != SIGUSR1)
		ev_break(loop, EVBREAK_ALL);
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: carteiro-sink -l ADDR:PORT[,opt=val...] [-l ...] [options]\n"
	    "  --ready-file FILE   write 'ready' there instead of stdout\n"
	    "  --pidfile FILE      write the PID\n"
	    "  --cert FILE --key FILE   enable STARTTLS\n"
	    "  --stats FILE        JSON stats on SIGUSR1, SIGTERM/SIGINT, interval\n"
	    "  --stats-interval S  also every S seconds\n"
	    "  --save DIR          save accepted messages as DIR/<listener>-<n>.eml\n"
	    "  --save-sample N     save only every Nth message\n"
	    "  -o OPTS, --OPT[=V]  default listener options (see bench/README.md):\n"
	    "     defer=P bounce=P greet=CODE fail=STAGE:CODE[:N] after=N delay=MS split\n"
	    "     huge=BYTES silent=STAGE drop=data tls=fail notls nopipelining\n"
	    "     maxsize=N maxconn=N name=NAME\n"
	    "  -v                  debug logging\n");
}

static int
write_file(const char *path, const char *text)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (f == NULL)
		return -1;
	fputs(text, f);
	if (fclose(f) != 0)
		return -1;
	return rename(tmp, path);
}

int
main(int argc, char **argv)
{
	struct sink *s = mem_calloc(1, sizeof *s);
	struct opts defaults;
	const char **specs = NULL;
	size_t nspecs = 0;
	const char *cert = NULL, *key = NULL, *ready_file = NULL, *pidfile = NULL;
	char err[512];
	int rc = 1;

	memset(&defaults, 0, sizeof defaults);
	defaults.maxsize = 50u << 20;
	s->start = time(NULL);
	enum { O_READY = 256, O_PID, O_CERT, O_KEY, O_STATS, O_STATSI, O_SAVE, O_SAMPLE };
	static const struct option lo[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "ready-file", required_argument, NULL, O_READY },
		{ "pidfile", required_argument, NULL, O_PID },
		{ "cert", required_argument, NULL, O_CERT },
		{ "key", required_argument, NULL, O_KEY },
		{ "stats", required_argument, NULL, O_STATS },
		{ "stats-interval", required_argument, NULL, O_STATSI },
		{ "save", required_argument, NULL, O_SAVE },
		{ "save-sample", required_argument, NULL, O_SAMPLE },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	/* Fault keywords as long options (--defer=5, --split) are default
	 * listener options; everything else goes to getopt. */
	char **nargv = mem_calloc((size_t)argc + 1, sizeof *nargv);
	int nargc = 0;
	for (int i = 0; i < argc; i++) {
		int known = i == 0 || strncmp(argv[i], "--", 2) != 0 || argv[i][2] == '\0';
		for (const struct option *p = lo; !known && p->name; p++) {
			size_t n = strlen(p->name);
			if (strncmp(argv[i] + 2, p->name, n) == 0 &&
			    (argv[i][2 + n] == '\0' || argv[i][2 + n] == '='))
				known = 1;
		}
		/* The argument of a previous option is never a fault keyword. */
		if (!known && i > 0 && nargc > 0 && strncmp(nargv[nargc - 1], "--", 2) == 0 &&
		    strchr(nargv[nargc - 1], '=') == NULL && strcmp(nargv[nargc - 1], "--help") != 0)
			known = 1;
		if (known) {
			nargv[nargc++] = argv[i];
			continue;
		}
		if (opt_apply(&defaults, argv[i] + 2, err, sizeof err) < 0) {
			fprintf(stderr, "carteiro-sink: %s\n", err);
			free(nargv);
			return 2;
		}
	}
	int ch;
	opterr = 1;
	while ((ch = getopt_long(nargc, nargv, "l:o:vh", lo, NULL)) != -1) {
		switch (ch) {
		case 'l':
			specs = mem_realloc(specs, (nspecs + 1) * sizeof *specs);
			specs[nspecs++] = optarg;
			break;
		case 'o': {
			char *copy = mem_strdup(optarg), *save = NULL;
			for (char *kv = strtok_r(copy, ",", &save); kv;
			     kv = strtok_r(NULL, ",", &save))
				if (opt_apply(&defaults, kv, err, sizeof err) < 0) {
					fprintf(stderr, "carteiro-sink: %s\n", err);
					free(copy);
					return 2;
				}
			free(copy);
			break;
		}
		case 'v': log_set_level(LOG_DEBUG); break;
		case O_READY: ready_file = optarg; break;
		case O_PID: pidfile = optarg; break;
		case O_CERT: cert = optarg; break;
		case O_KEY: key = optarg; break;
		case O_STATS: s->stats_file = optarg; break;
		case O_STATSI: s->stats_interval = atof(optarg); break;
		case O_SAVE: s->save_dir = optarg; break;
		case O_SAMPLE: s->save_sample = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (nspecs == 0) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	s->loop = EV_DEFAULT;
	if (cert != NULL || key != NULL) {
		s->tls = SSL_CTX_new(TLS_server_method());
		if (s->tls == NULL || cert == NULL || key == NULL ||
		    SSL_CTX_use_certificate_chain_file(s->tls, cert) != 1 ||
		    SSL_CTX_use_PrivateKey_file(s->tls, key, SSL_FILETYPE_PEM) != 1) {
			fprintf(stderr, "carteiro-sink: TLS: cannot load --cert %s / --key %s\n",
			    cert ? cert : "(none)", key ? key : "(none)");
			goto out;
		}
		SSL_CTX_set_session_id_context(s->tls, (const unsigned char *)"sink", 4);
		SSL_CTX_set_session_cache_mode(s->tls, SSL_SESS_CACHE_SERVER);
	}
	if (s->save_dir != NULL && mkdir(s->save_dir, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "carteiro-sink: --save %s: %s\n", s->save_dir, strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < nspecs; i++)
		if (listener_open(s, specs[i], &defaults, err, sizeof err) < 0) {
			fprintf(stderr, "carteiro-sink: %s\n", err);
			goto out;
		}
	ev_signal_init(&s->sig_usr1, signal_cb, SIGUSR1);
	ev_signal_init(&s->sig_term, signal_cb, SIGTERM);
	ev_signal_init(&s->sig_int, signal_cb, SIGINT);
	s->sig_usr1.data = s->sig_term.data = s->sig_int.data = s;
	ev_signal_start(s->loop, &s->sig_usr1);
	ev_signal_start(s->loop, &s->sig_term);
	ev_signal_start(s->loop, &s->sig_int);
	if (s->stats_interval > 0) {
		ev_timer_init(&s->stats_timer, stats_timer_cb, s->stats_interval,
		    s->stats_interval);
		s->stats_timer.data = s;
		ev_timer_start(s->loop, &s->stats_timer);
	}
	if (pidfile != NULL) {
		char pid[32];
		snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
		if (write_file(pidfile, pid) < 0) {
			fprintf(stderr, "carteiro-sink: --pidfile %s: %s\n", pidfile, strerror(errno));
			goto out;
		}
	}
	if (ready_file != NULL) {
		if (write_file(ready_file, "ready\n") < 0) {
			fprintf(stderr, "carteiro-sink: --ready-file %s: %s\n", ready_file,
			    strerror(errno));
			goto out;
		}
	} else {
		fputs("ready\n", stdout);
		fflush(stdout);
	}
	ev_run(s->loop, 0);
	rc = 0;
out:
	/* Connections still open at exit are reclaimed by the OS. */
	for (size_t i = 0; i < s->nls; i++) {
		struct listener *l = s->ls[i];
		close(l->fd);
		for (size_t j = 0; j < l->domcap; j++)
			free(l->doms[j].name);
		free(l->doms);
		free(l->hist);
		free(l->clients);
		free(l);
	}
	free(s->ls);
	free(s->deferred);
	free(specs);
	free(nargv);
	while (s->conns != NULL)
		conn_free(s->conns);
	if (s->tls)
		SSL_CTX_free(s->tls);
	free(s);
	return rc;
}
