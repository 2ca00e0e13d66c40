/*
 * smtp — the outbound session; see smtp.h and docs/smtp.md.
 *
 * The session is a state machine (enum state, names from one table, one
 * function `enter()` that changes state and arms the state's timeout).
 * Commands sent wait for their replies in a FIFO of expected reply kinds:
 * with PIPELINING, MAIL, RCPT and DATA go out in one write and their three
 * replies are matched in order; without it, one command at a time. The
 * message body is written from the owner's buffer as it is (no copy),
 * followed by ".\r\n".
 *
 * Teardown: end() reports every unfinished message as DEFERRED, then
 * ended(), closes the socket and starts a zero-delay timer that frees the
 * session from the loop, never from inside its own callbacks.
 */
#include "engine/smtp.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>
#include <unistd.h>

#include "engine/buf.h"
#include "engine/log.h"
#include "engine/mem.h"

/* ---- states ---- */

#define STATES(X) \
	X(CONNECTING, "connecting") \
	X(GREETING, "greeting") \
	X(EHLO, "ehlo") \
	X(HELO, "helo") \
	X(STARTTLS, "starttls") \
	X(TLS, "tls-handshake") \
	X(READY, "ready") \
	X(TXN, "transaction") \
	X(BODY, "data") \
	X(RSET, "rset") \
	X(IDLE, "idle") \
	X(QUIT, "quit") \
	X(CLOSED, "closed")

enum state {
#define X(a, b) ST_##a,
	STATES(X)
#undef X
};

static const char *const state_names[] = {
#define X(a, b) b,
	STATES(X)
#undef X
};

enum expect { E_GREET, E_EHLO, E_HELO, E_STARTTLS, E_MAIL, E_RCPT, E_DATA,
	E_DOT, E_RSET, E_QUIT };

#define FIFO_MAX 8

struct seg {
	const char *p;
	size_t len;
	char *own;
};

struct smtp_session {
	struct ev_loop *loop;
	struct smtp_params p;
	struct sockaddr_storage addr, src;
	char *mx_host, *site, *helo;
	struct smtp_ops ops;
	void *owner;
	uint64_t id;
	int fd;
	SSL *ssl;
	bool tls_on;
	char tls_version[32], tls_cipher[80];
	enum state st;
	ev_io rio, wio;
	ev_timer tm, reaper;
	bool want_read_for_write;   /* TLS: a write waits for readability */

	struct seg segs[8];
	size_t nseg, seg_off;

	char rbuf[16384];
	size_t rlen;
	struct smtp_reply rep;
	enum expect fifo[FIFO_MAX];
	size_t fhead, fcount;

	unsigned ext;
	unsigned long long size_limit;

	bool have_msg;
	struct smtp_msg msg;
	bool txn_failed;
	struct smtp_result fres;   /* the failure being carried */
	char freply[512];
	double t0;
	bool need_rset;
	unsigned sent, delivered;
	bool closing, ended;
};

static void enter(struct smtp_session *s, enum state st);
static void go_ready(struct smtp_session *s);
static void update_io(struct smtp_session *s);

const char *smtp_state_name(const struct smtp_session *s)
{
	return state_names[s->st];
}

const char *smtp_stage_name(enum smtp_stage st)
{
	static const char *const n[] = { "connect", "greeting", "ehlo",
		"starttls", "tls", "mail", "rcpt", "data", "dot", "rset", "quit",
		"local" };
	return (unsigned)st < sizeof n / sizeof *n ? n[st] : "?";
}

const char *smtp_cat_name(enum smtp_cat c)
{
	static const char *const n[] = { NULL, "bad_mailbox", "mailbox_full",
		"too_large", "policy_spam", "auth_dmarc", "other" };
	return (unsigned)c < sizeof n / sizeof *n ? n[c] : "other";
}

/* ---- pure pieces ---- */

static bool has_word(const char *text, const char *const *words)
{
	for (size_t i = 0; words[i]; i++)
		if (strcasestr(text, words[i]))
			return true;
	return false;
}

enum smtp_kind smtp_classify(int code, const char *enh, const char *text,
	enum smtp_cat *cat)
{
	static const char *const bad[] = { "user unknown", "unknown user",
		"no such user", "mailbox unavailable", "does not exist",
		"invalid recipient", "recipient address rejected", "no mailbox",
		"mailbox not found", "address rejected", "usuário inexistente",
		"usuario inexistente", NULL };
	static const char *const full[] = { "quota", "mailbox full",
		"mailbox is full", "caixa cheia", "insufficient storage",
		"out of storage", NULL };
	static const char *const large[] = { "too large", "too big",
		"size limit", "message size", "exceeds", NULL };
	static const char *const auth[] = { "dmarc", "spf", "dkim",
		"unauthenticated", "authentication", NULL };
	static const char *const spam[] = { "spam", "blocked", "blacklist",
		"blocklist", "listed", "reputation", "policy", "rejected due to",
		NULL };
	enum smtp_kind k = code >= 200 && code < 300 ? SMTP_DELIVERED
		: code >= 500 && code < 600 ? SMTP_BOUNCED : SMTP_DEFERRED;
	enum smtp_cat c = SMTP_CAT_NONE;
	int x = 0, y = -1, z = -1;
	if (enh && *enh)
		sscanf(enh, "%d.%d.%d", &x, &y, &z);
	text = text ? text : "";
	if (k != SMTP_DELIVERED) {
		if (y == 1 && (z == 1 || z == 2 || z == 3 || z == 6 || z == 10))
			c = SMTP_CAT_BAD_MAILBOX;
		else if (y == 2 && z == 2)
			c = SMTP_CAT_MAILBOX_FULL;
		else if ((y == 3 && z == 4) || (y == 2 && z == 3))
			c = SMTP_CAT_TOO_LARGE;
		else if (y == 7 && (z == 25 || z == 26 || z == 27 || z == 5 ||
		    z == 7 || z == 23 || z == 24))
			c = SMTP_CAT_AUTH_DMARC;
		else if (y == 7)
			c = has_word(text, auth) ? SMTP_CAT_AUTH_DMARC
				: SMTP_CAT_POLICY_SPAM;
		else if (has_word(text, bad))
			c = SMTP_CAT_BAD_MAILBOX;
		else if (has_word(text, full))
			c = SMTP_CAT_MAILBOX_FULL;
		else if (has_word(text, large) || (code == 552 && y < 0))
			c = SMTP_CAT_TOO_LARGE;
		else if (has_word(text, auth))
			c = SMTP_CAT_AUTH_DMARC;
		else if (has_word(text, spam))
			c = SMTP_CAT_POLICY_SPAM;
		else
			c = SMTP_CAT_OTHER;
	}
	if (cat)
		*cat = c;
	return k;
}

void smtp_reply_init(struct smtp_reply *r)
{
	memset(r, 0, sizeof *r);
	r->first = true;
}

static void parse_enhanced(struct smtp_reply *r, const char *t)
{
	const char *p = t;
	if (*p != '2' && *p != '4' && *p != '5')
		return;
	p++;
	for (int part = 0; part < 2; part++) {
		if (*p != '.')
			return;
		p++;
		int d = 0;
		while (isdigit((unsigned char)*p) && d < 3) {
			p++;
			d++;
		}
		if (!d)
			return;
	}
	if (*p && *p != ' ')
		return;
	size_t l = (size_t)(p - t);
	if (l < sizeof r->enhanced) {
		memcpy(r->enhanced, t, l);
		r->enhanced[l] = 0;
	}
}

static void end_line(struct smtp_reply *r)
{
	size_t l = r->ll;
	if (l && r->line[l - 1] == '\r')
		l--;
	r->line[l] = 0;
	r->lines++;
	if (l < 3 || !isdigit((unsigned char)r->line[0]) ||
	    !isdigit((unsigned char)r->line[1]) ||
	    !isdigit((unsigned char)r->line[2]) ||
	    (l > 3 && r->line[3] != ' ' && r->line[3] != '-')) {
		r->error = true;
		return;
	}
	int code = (r->line[0] - '0') * 100 + (r->line[1] - '0') * 10 +
		(r->line[2] - '0');
	if (r->first)
		r->cur = code;
	else if (code != r->cur) {
		r->error = true;
		return;
	}
	const char *t = l > 4 ? r->line + 4 : "";
	if (r->first)
		parse_enhanced(r, t);
	/* Keep a bounded, printable copy of the text. */
	if (!r->first && r->len < sizeof r->text - 1)
		r->text[r->len++] = '\n';
	for (const char *q = t; *q && r->len < sizeof r->text - 1; q++)
		r->text[r->len++] = (unsigned char)*q < 0x20 || *q == 0x7f ? '?'
			: *q;
	r->text[r->len] = 0;
	r->first = false;
	if (l <= 3 || r->line[3] == ' ')
		r->code = r->cur;
}

size_t smtp_reply_feed(struct smtp_reply *r, const char *p, size_t n)
{
	size_t i = 0;
	while (i < n && !r->code && !r->error) {
		char c = p[i++];
		if (c == '\n') {
			end_line(r);
			r->ll = 0;
			r->overflow = false;
			continue;
		}
		if (r->ll < sizeof r->line - 1)
			r->line[r->ll++] = c;
		else
			r->overflow = true;   /* the rest of the line is dropped */
	}
	return i;
}

bool smtp_envelope_ok(const char *a)
{
	size_t n = 0;
	for (; a[n]; n++) {
		unsigned char c = (unsigned char)a[n];
		if (c <= 0x20 || c == 0x7f || c == '<' || c == '>')
			return false;
	}
	return n > 0 && n <= 320;
}

bool smtp_data_ok(const char *p, size_t n)
{
	if (n == 0)
		return true;
	if (n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n')
		return false;
	if (n >= 3 && p[0] == '.' && p[1] == '\r' && p[2] == '\n')
		return false;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\r' && (i + 1 >= n || p[i + 1] != '\n'))
			return false;
		if (p[i] == '\n') {
			if (i == 0 || p[i - 1] != '\r')
				return false;
			if (i + 3 < n + 1 && i + 1 < n && p[i + 1] == '.' &&
			    i + 3 < n && p[i + 2] == '\r' && p[i + 3] == '\n')
				return false;
		}
	}
	return true;
}

unsigned smtp_parse_ehlo(const char *text, unsigned long long *size)
{
	unsigned ext = 0;
	*size = 0;
	const char *line = strchr(text, '\n');   /* first line: greeting */
	while (line) {
		line++;
		const char *e = strchr(line, '\n');
		size_t l = e ? (size_t)(e - line) : strlen(line);
		char kw[32];
		size_t k = 0;
		while (k < l && k < sizeof kw - 1 && line[k] != ' ') {
			kw[k] = (char)toupper((unsigned char)line[k]);
			k++;
		}
		kw[k] = 0;
		if (!strcmp(kw, "PIPELINING"))
			ext |= SMTP_EXT_PIPELINING;
		else if (!strcmp(kw, "STARTTLS"))
			ext |= SMTP_EXT_STARTTLS;
		else if (!strcmp(kw, "8BITMIME"))
			ext |= SMTP_EXT_8BITMIME;
		else if (!strcmp(kw, "SMTPUTF8"))
			ext |= SMTP_EXT_SMTPUTF8;
		else if (!strcmp(kw, "ENHANCEDSTATUSCODES"))
			ext |= SMTP_EXT_ENHANCED;
		else if (!strcmp(kw, "SIZE")) {
			ext |= SMTP_EXT_SIZE;
			if (k < l)
				*size = strtoull(line + k + 1, NULL, 10);
		}
		line = e;
	}
	return ext;
}

/* ---- time ---- */

static void set_timer(struct smtp_session *s, double secs)
{
	ev_timer_stop(s->loop, &s->tm);
	if (secs > 0) {
		ev_timer_set(&s->tm, secs, 0);
		ev_timer_start(s->loop, &s->tm);
	}
}

static double timeout_of(struct smtp_session *s, enum state st)
{
	const struct smtp_timeouts *t = &s->p.to;
	switch (st) {
	case ST_CONNECTING: return t->connect;
	case ST_GREETING: return t->greeting;
	case ST_EHLO: case ST_HELO: return t->ehlo;
	case ST_STARTTLS: case ST_TLS: return t->starttls;
	case ST_TXN: return t->mail > t->rcpt ? t->mail : t->rcpt;
	case ST_BODY: return t->data_block;
	case ST_RSET: return t->rset;
	case ST_IDLE: return t->idle;
	case ST_QUIT: return t->quit;
	default: return 0;
	}
}

static void enter(struct smtp_session *s, enum state st)
{
	log_debug("smtp %llu %s: %s -> %s", (unsigned long long)s->id,
		s->mx_host, state_names[s->st], state_names[st]);
	s->st = st;
	set_timer(s, timeout_of(s, st));
}

static double now_ms(struct smtp_session *s)
{
	ev_now_update(s->loop);
	return ev_now(s->loop) * 1000.0;
}

/* ---- ending ---- */

static void reaper_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct smtp_session *s = w->data;
	(void)loop;
	(void)revents;
	for (size_t i = 0; i < s->nseg; i++)
		free(s->segs[i].own);
	free(s->mx_host);
	free(s->site);
	free(s->helo);
	free(s);
}

static enum smtp_stage stage_of(struct smtp_session *s)
{
	switch (s->st) {
	case ST_CONNECTING: return SMTP_STAGE_CONNECT;
	case ST_GREETING: return SMTP_STAGE_GREETING;
	case ST_EHLO: case ST_HELO: return SMTP_STAGE_EHLO;
	case ST_STARTTLS: return SMTP_STAGE_STARTTLS;
	case ST_TLS: return SMTP_STAGE_TLS;
	case ST_TXN:
		return s->fcount && s->fifo[s->fhead] == E_RCPT ? SMTP_STAGE_RCPT
			: s->fcount && s->fifo[s->fhead] == E_DATA ? SMTP_STAGE_DATA
			: SMTP_STAGE_MAIL;
	case ST_BODY: return SMTP_STAGE_DOT;
	case ST_RSET: return SMTP_STAGE_RSET;
	default: return SMTP_STAGE_QUIT;
	}
}

static void fill_tls(struct smtp_session *s, struct smtp_result *r)
{
	r->tls_version = s->tls_on ? s->tls_version : NULL;
	r->tls_cipher = s->tls_on ? s->tls_cipher : NULL;
}

static void report(struct smtp_session *s, struct smtp_result *r)
{
	struct smtp_msg m = s->msg;
	s->have_msg = false;
	r->ms = now_ms(s) - s->t0;
	fill_tls(s, r);
	if (r->kind == SMTP_DELIVERED)
		s->delivered++;
	s->ops.done(s->owner, s, &m, r);
}

static void end(struct smtp_session *s, int code, const char *why,
	bool try_next)
{
	if (s->ended)
		return;
	struct smtp_end e = { stage_of(s), code, why,
		s->st == ST_CONNECTING || s->st == ST_GREETING, try_next,
		s->delivered };
	s->ended = true;
	if (s->have_msg) {
		struct smtp_result r = { 0 };
		r.kind = SMTP_DEFERRED;
		r.stage = stage_of(s);
		r.code = code;
		r.reply = why;
		r.cat = SMTP_CAT_OTHER;
		report(s, &r);
	}
	ev_io_stop(s->loop, &s->rio);
	ev_io_stop(s->loop, &s->wio);
	ev_timer_stop(s->loop, &s->tm);
	if (s->ssl) {
		/* A close_notify keeps the session resumable (OpenSSL drops
		 * sessions of connections that end without one). */
		if (s->tls_on) {
			ERR_clear_error();
			SSL_shutdown(s->ssl);
			ERR_clear_error();
		}
		SSL_free(s->ssl);
		s->ssl = NULL;
	}
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	s->st = ST_CLOSED;
	s->ops.ended(s->owner, s, &e);
	ev_timer_init(&s->reaper, reaper_cb, 0, 0);
	s->reaper.data = s;
	ev_timer_start(s->loop, &s->reaper);
}

/* ---- output ---- */

static void queue_seg(struct smtp_session *s, const char *p, size_t len,
	bool copy)
{
	if (s->nseg == sizeof s->segs / sizeof *s->segs || len == 0)
		return;
	struct seg *g = &s->segs[s->nseg++];
	g->own = copy ? mem_memdup(p, len) : NULL;
	g->p = copy ? g->own : p;
	g->len = len;
}

static void send_cmd(struct smtp_session *s, enum expect e, const char *fmt,
	...) __attribute__((format(printf, 3, 4)));

static void send_cmd(struct smtp_session *s, enum expect e, const char *fmt,
	...)
{
	buf_t b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	buf_adds(&b, "\r\n");
	queue_seg(s, b.p, b.len, true);
	buf_free(&b);
	if (s->fcount < FIFO_MAX)
		s->fifo[(s->fhead + s->fcount++) % FIFO_MAX] = e;
	update_io(s);
}

/* Write what we can. Returns -1 when the session ended. */
static int flush(struct smtp_session *s)
{
	while (s->nseg) {
		struct seg *g = &s->segs[0];
		const char *p = g->p + s->seg_off;
		size_t left = g->len - s->seg_off;
		ssize_t n;
		if (s->ssl) {
			ERR_clear_error();
			int w = SSL_write(s->ssl, p, (int)(left > 1 << 30 ? 1 << 30
				: left));
			if (w <= 0) {
				int e = SSL_get_error(s->ssl, w);
				if (e == SSL_ERROR_WANT_WRITE)
					return 0;
				if (e == SSL_ERROR_WANT_READ) {
					s->want_read_for_write = true;
					return 0;
				}
				end(s, 0, "TLS write failed", false);
				return -1;
			}
			n = w;
		} else {
			struct iovec iov[8];
			int cnt = 0;
			iov[cnt].iov_base = (void *)p;
			iov[cnt++].iov_len = left;
			for (size_t i = 1; i < s->nseg && cnt < 8; i++) {
				iov[cnt].iov_base = (void *)s->segs[i].p;
				iov[cnt++].iov_len = s->segs[i].len;
			}
			n = writev(s->fd, iov, cnt);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					return 0;
				char why[160];
				snprintf(why, sizeof why, "write: %s", strerror(errno));
				end(s, 0, why, false);
				return -1;
			}
		}
		/* Consume n bytes across segments. */
		size_t k = (size_t)n;
		if (s->st == ST_BODY && k)
			set_timer(s, s->p.to.data_block);
		while (k && s->nseg) {
			struct seg *h = &s->segs[0];
			size_t l = h->len - s->seg_off;
			if (k < l) {
				s->seg_off += k;
				k = 0;
				break;
			}
			k -= l;
			free(h->own);
			memmove(s->segs, s->segs + 1, (s->nseg - 1) * sizeof *s->segs);
			s->nseg--;
			s->seg_off = 0;
		}
	}
	/* Everything written: waiting for the final reply after the dot. */
	if (s->st == ST_BODY)
		set_timer(s, s->p.to.data_term);
	return 0;
}

static void update_io(struct smtp_session *s)
{
	if (s->ended || s->fd < 0)
		return;
	if (s->st == ST_CONNECTING) {
		ev_io_stop(s->loop, &s->rio);
		ev_io_start(s->loop, &s->wio);
		return;
	}
	if (s->st == ST_TLS)
		return;   /* the handshake sets its own watchers */
	ev_io_start(s->loop, &s->rio);
	if (s->nseg && !s->want_read_for_write)
		ev_io_start(s->loop, &s->wio);
	else
		ev_io_stop(s->loop, &s->wio);
}

/* ---- protocol ---- */

static bool wants_tls(struct smtp_session *s)
{
	return s->p.tls != SMTP_TLS_NONE && s->p.tls_ctx;
}

static void send_ehlo(struct smtp_session *s)
{
	enter(s, ST_EHLO);
	send_cmd(s, E_EHLO, "EHLO %s", s->helo);
}

static void after_ehlo(struct smtp_session *s)
{
	if (!s->tls_on && wants_tls(s) && (s->ext & SMTP_EXT_STARTTLS)) {
		enter(s, ST_STARTTLS);
		send_cmd(s, E_STARTTLS, "STARTTLS");
		return;
	}
	if (!s->tls_on && s->p.tls >= SMTP_TLS_REQUIRED) {
		end(s, 0, "STARTTLS not offered by the server; policy requires "
			"TLS", true);
		return;
	}
	go_ready(s);
}

static void handshake(struct smtp_session *s)
{
	ERR_clear_error();
	int rc = SSL_do_handshake(s->ssl);
	if (rc == 1) {
		s->tls_on = true;
		snprintf(s->tls_version, sizeof s->tls_version, "%s",
			SSL_get_version(s->ssl));
		snprintf(s->tls_cipher, sizeof s->tls_cipher, "%s",
			SSL_get_cipher_name(s->ssl));
		tls_client_handshake_done(s->p.tls_ctx, s->ssl);
		ev_io_stop(s->loop, &s->wio);
		s->ext = 0;
		send_ehlo(s);   /* RFC 3207: forget what we knew, EHLO again */
		return;
	}
	int e = SSL_get_error(s->ssl, rc);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		ev_io_stop(s->loop, &s->rio);
		ev_io_stop(s->loop, &s->wio);
		ev_io_start(s->loop, e == SSL_ERROR_WANT_READ ? &s->rio : &s->wio);
		return;
	}
	char why[300], ossl[200];
	tls_error_string(ossl, sizeof ossl);
	long vr = SSL_get_verify_result(s->ssl);
	if (vr != X509_V_OK)
		snprintf(why, sizeof why, "TLS handshake failed: certificate: %s",
			X509_verify_cert_error_string(vr));
	else
		snprintf(why, sizeof why, "TLS handshake failed: %s", ossl);
	tls_client_failed(s->p.tls_ctx);
	end(s, 0, why, true);
}

static void start_tls(struct smtp_session *s)
{
	char err[200];
	/* (on_readable drops what the server sent after its 220.) */
	s->ssl = tls_client_ssl(s->p.tls_ctx, s->fd, s->mx_host, s->site,
		s->p.tls == SMTP_TLS_VERIFY, err, sizeof err);
	if (!s->ssl) {
		end(s, 0, err, true);
		return;
	}
	enter(s, ST_TLS);
	handshake(s);
}

static void fail_local(struct smtp_session *s, enum smtp_cat cat,
	const char *why)
{
	struct smtp_result r = { 0 };
	r.kind = SMTP_BOUNCED;
	r.stage = SMTP_STAGE_LOCAL;
	r.reply = why;
	r.cat = cat;
	report(s, &r);
}

/* Validate and start the transaction of s->msg. false: refused locally. */
static bool start_txn(struct smtp_session *s)
{
	const struct smtp_msg *m = &s->msg;
	s->t0 = now_ms(s);
	if ((m->sender[0] && !smtp_envelope_ok(m->sender)) ||
	    !smtp_envelope_ok(m->rcpt)) {
		fail_local(s, SMTP_CAT_OTHER, "invalid envelope address");
		return false;
	}
	if (!smtp_data_ok(m->data, m->len)) {
		fail_local(s, SMTP_CAT_OTHER, "invalid message data (bare CR/LF "
			"or unstuffed dot)");
		return false;
	}
	if ((s->ext & SMTP_EXT_SIZE) && s->size_limit &&
	    m->len > s->size_limit) {
		char why[160];
		snprintf(why, sizeof why, "message of %zu bytes exceeds the "
			"server's SIZE %llu", m->len, s->size_limit);
		fail_local(s, SMTP_CAT_TOO_LARGE, why);
		return false;
	}
	if ((m->flags & SMTP_MSG_SMTPUTF8) && !(s->ext & SMTP_EXT_SMTPUTF8)) {
		fail_local(s, SMTP_CAT_OTHER, "the server does not offer SMTPUTF8");
		return false;
	}
	s->txn_failed = false;
	s->sent++;
	enter(s, ST_TXN);
	char extra[80] = "";
	size_t el = 0;
	if (s->ext & SMTP_EXT_SIZE)
		el += (size_t)snprintf(extra + el, sizeof extra - el, " SIZE=%zu",
			m->len);
	if ((m->flags & SMTP_MSG_8BIT) && (s->ext & SMTP_EXT_8BITMIME))
		el += (size_t)snprintf(extra + el, sizeof extra - el,
			" BODY=8BITMIME");
	if ((m->flags & SMTP_MSG_SMTPUTF8))
		snprintf(extra + el, sizeof extra - el, " SMTPUTF8");
	send_cmd(s, E_MAIL, "MAIL FROM:<%s>%s", m->sender, extra);
	if (s->ext & SMTP_EXT_PIPELINING) {
		send_cmd(s, E_RCPT, "RCPT TO:<%s>", m->rcpt);
		send_cmd(s, E_DATA, "DATA");
	}
	return true;
}

static void go_ready(struct smtp_session *s)
{
	for (;;) {
		if (s->ended)
			return;
		if (s->need_rset) {
			s->need_rset = false;
			enter(s, ST_RSET);
			send_cmd(s, E_RSET, "RSET");
			return;
		}
		unsigned max = s->p.max_msgs ? s->p.max_msgs : 100;
		enum smtp_next nx = SMTP_NEXT_QUIT;
		if (!s->closing && s->sent < max) {
			memset(&s->msg, 0, sizeof s->msg);
			nx = s->ops.next(s->owner, s, &s->msg);
			if (s->ended)
				return;
		}
		if (nx == SMTP_NEXT_WAIT && !s->closing) {
			enter(s, ST_IDLE);
			update_io(s);
			return;
		}
		if (nx != SMTP_NEXT_MSG) {
			enter(s, ST_QUIT);
			send_cmd(s, E_QUIT, "QUIT");
			return;
		}
		s->have_msg = true;
		if (start_txn(s))
			return;
		/* refused locally: ask for the next one */
	}
}

static void carry_failure(struct smtp_session *s, enum smtp_stage st)
{
	if (s->txn_failed)
		return;
	s->txn_failed = true;
	memset(&s->fres, 0, sizeof s->fres);
	s->fres.stage = st;
	s->fres.code = s->rep.code;
	snprintf(s->fres.enhanced, sizeof s->fres.enhanced, "%s",
		s->rep.enhanced);
	snprintf(s->freply, sizeof s->freply, "%d %.480s", s->rep.code, s->rep.text);
	for (char *p = s->freply; *p; p++)
		if (*p == '\n')
			*p = ' ';
	s->fres.reply = s->freply;
	s->fres.kind = smtp_classify(s->rep.code, s->rep.enhanced, s->rep.text,
		&s->fres.cat);
	if (s->fres.kind == SMTP_DELIVERED)
		s->fres.kind = SMTP_DEFERRED;   /* a 2xx/3xx where it should not */
}

/* After a reply of the current transaction: finish it when nothing of it
 * is pending any more. */
static void txn_settle(struct smtp_session *s)
{
	if (!s->txn_failed || s->fcount)
		return;
	report(s, &s->fres);
	s->need_rset = true;
	go_ready(s);
}

static void on_reply(struct smtp_session *s)
{
	if (!s->fcount) {
		end(s, s->rep.code, "reply without a command", false);
		return;
	}
	enum expect e = s->fifo[s->fhead];
	s->fhead = (s->fhead + 1) % FIFO_MAX;
	s->fcount--;
	int c = s->rep.code;
	/* 421 at any point: the server is closing. */
	if (c == 421 && e != E_QUIT) {
		char why[600];
		snprintf(why, sizeof why, "421 %.480s", s->rep.text);
		end(s, c, why, e == E_GREET || e == E_EHLO || e == E_HELO);
		return;
	}
	switch (e) {
	case E_GREET:
		if (c / 100 == 2) {
			send_ehlo(s);
		} else {
			char why[600];
			snprintf(why, sizeof why, "greeting: %d %.480s", c, s->rep.text);
			end(s, c, why, true);
		}
		break;
	case E_EHLO:
		if (c / 100 == 2) {
			s->ext = smtp_parse_ehlo(s->rep.text, &s->size_limit);
			after_ehlo(s);
		} else if (c / 100 == 5) {
			enter(s, ST_HELO);
			send_cmd(s, E_HELO, "HELO %s", s->helo);
		} else {
			end(s, c, "EHLO refused", false);
		}
		break;
	case E_HELO:
		if (c / 100 == 2) {
			s->ext = 0;
			after_ehlo(s);
		} else {
			end(s, c, "HELO refused", true);
		}
		break;
	case E_STARTTLS:
		if (c == 220)
			start_tls(s);
		else if (s->p.tls == SMTP_TLS_OPPORTUNISTIC)
			go_ready(s);
		else
			end(s, c, "STARTTLS refused; policy requires TLS", true);
		break;
	case E_MAIL:
		if (c / 100 != 2)
			carry_failure(s, SMTP_STAGE_MAIL);
		else if (!(s->ext & SMTP_EXT_PIPELINING))
			send_cmd(s, E_RCPT, "RCPT TO:<%s>", s->msg.rcpt);
		txn_settle(s);
		break;
	case E_RCPT:
		if (c / 100 != 2)
			carry_failure(s, SMTP_STAGE_RCPT);
		else if (!(s->ext & SMTP_EXT_PIPELINING) && !s->txn_failed)
			send_cmd(s, E_DATA, "DATA");
		txn_settle(s);
		break;
	case E_DATA:
		if (c == 354) {
			if (s->txn_failed) {
				/* Should not happen (no valid recipient), but end the
				 * data phase cleanly without sending the message. */
				send_cmd(s, E_DOT, ".");
			} else {
				enter(s, ST_BODY);
				queue_seg(s, s->msg.data, s->msg.len, false);
				queue_seg(s, ".\r\n", 3, false);
				if (s->fcount < FIFO_MAX)
					s->fifo[(s->fhead + s->fcount++) % FIFO_MAX] = E_DOT;
				update_io(s);
			}
		} else {
			carry_failure(s, SMTP_STAGE_DATA);
			txn_settle(s);
		}
		break;
	case E_DOT:
		if (s->txn_failed) {
			txn_settle(s);
			break;
		}
		{
			struct smtp_result r = { 0 };
			char reply[600];
			r.stage = SMTP_STAGE_DOT;
			r.code = c;
			snprintf(r.enhanced, sizeof r.enhanced, "%s", s->rep.enhanced);
			snprintf(reply, sizeof reply, "%d %.480s", c, s->rep.text);
			for (char *p = reply; *p; p++)
				if (*p == '\n')
					*p = ' ';
			r.reply = reply;
			r.kind = smtp_classify(c, s->rep.enhanced, s->rep.text, &r.cat);
			if (r.kind != SMTP_DELIVERED)
				s->need_rset = true;
			report(s, &r);
			if (!s->ended)
				go_ready(s);
		}
		break;
	case E_RSET:
		if (c / 100 == 2)
			go_ready(s);
		else
			end(s, c, "RSET refused", false);
		break;
	case E_QUIT:
		end(s, c, "QUIT", false);
		break;
	}
}

static void on_readable(struct smtp_session *s)
{
	for (;;) {
		ssize_t n;
		if (s->ssl) {
			ERR_clear_error();
			int r = SSL_read(s->ssl, s->rbuf + s->rlen,
				(int)(sizeof s->rbuf - s->rlen));
			if (r <= 0) {
				int e = SSL_get_error(s->ssl, r);
				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					break;
				char why[300];
				if (e == SSL_ERROR_ZERO_RETURN ||
				    e == SSL_ERROR_SYSCALL || ERR_peek_error() == 0) {
					snprintf(why, sizeof why, "connection closed by the "
						"server");
				} else {
					char ossl[200];
					tls_error_string(ossl, sizeof ossl);
					snprintf(why, sizeof why, "connection closed by the "
						"server (TLS: %s)", ossl);
				}
				end(s, 0, why, false);
				return;
			}
			n = r;
		} else {
			n = read(s->fd, s->rbuf + s->rlen, sizeof s->rbuf - s->rlen);
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				break;
			if (n <= 0) {
				char why[160];
				snprintf(why, sizeof why, "%s", n == 0 ? "connection "
					"closed by the server" : strerror(errno));
				end(s, 0, why, s->st == ST_GREETING);
				return;
			}
		}
		s->rlen += (size_t)n;
		size_t off = 0;
		while (off < s->rlen && !s->ended) {
			off += smtp_reply_feed(&s->rep, s->rbuf + off, s->rlen - off);
			if (s->rep.error) {
				end(s, 0, "malformed reply from the server", false);
				return;
			}
			if (!s->rep.code)
				break;
			SSL *before = s->ssl;
			on_reply(s);
			smtp_reply_init(&s->rep);
			if (s->ssl != before || s->ended) {
				/* STARTTLS began (the handshake may even have finished
				 * already): plaintext bytes after the 220 are an
				 * injection attempt and are dropped. Or we are done. */
				off = s->rlen = 0;
				break;
			}
		}
		if (s->ended)
			return;
		if (off) {
			memmove(s->rbuf, s->rbuf + off, s->rlen - off);
			s->rlen -= off;
		}
		if (s->st == ST_TLS)
			return;
		if (!s->ssl)
			continue;
		if (SSL_pending(s->ssl) <= 0)
			break;
	}
	if (!s->ended)
		update_io(s);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct smtp_session *s = w->data;
	(void)loop;
	if (s->ended)
		return;
	if (s->st == ST_CONNECTING) {
		int e = 0;
		socklen_t l = sizeof e;
		getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &l);
		if (e) {
			char why[160];
			snprintf(why, sizeof why, "connect: %s", strerror(e));
			end(s, 0, why, true);
			return;
		}
		ev_io_stop(s->loop, &s->wio);
		if (s->fcount < FIFO_MAX)
			s->fifo[(s->fhead + s->fcount++) % FIFO_MAX] = E_GREET;
		enter(s, ST_GREETING);
		update_io(s);
		return;
	}
	if (s->st == ST_TLS) {
		handshake(s);
		return;
	}
	if (revents & EV_READ) {
		if (s->want_read_for_write) {
			s->want_read_for_write = false;
			if (flush(s) < 0)
				return;
		}
		on_readable(s);
		if (s->ended)
			return;
	}
	if ((revents & EV_WRITE) && flush(s) < 0)
		return;
	update_io(s);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct smtp_session *s = w->data;
	(void)loop;
	(void)revents;
	if (s->st == ST_IDLE) {
		enter(s, ST_QUIT);
		send_cmd(s, E_QUIT, "QUIT");
		return;
	}
	if (s->st == ST_QUIT) {
		end(s, 0, "QUIT", false);
		return;
	}
	char why[120];
	snprintf(why, sizeof why, "timeout in state %s", state_names[s->st]);
	end(s, 0, why, s->st == ST_CONNECTING || s->st == ST_GREETING ||
		s->st == ST_TLS);
}

static void start_fail_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct smtp_session *s = w->data;
	(void)loop;
	(void)revents;
	ev_timer_stop(s->loop, &s->reaper);
	end(s, 0, "connect failed", true);
}

struct smtp_session *smtp_open(struct ev_loop *loop,
	const struct smtp_params *p, const struct smtp_ops *ops, void *owner,
	uint64_t id)
{
	struct smtp_session *s = mem_calloc(1, sizeof *s);
	s->loop = loop;
	s->p = *p;
	memcpy(&s->addr, p->addr, p->addrlen);
	s->p.addr = (struct sockaddr *)&s->addr;
	if (p->source) {
		memcpy(&s->src, p->source, p->sourcelen);
		s->p.source = (struct sockaddr *)&s->src;
	}
	s->mx_host = mem_strdup(p->mx_host ? p->mx_host : "");
	s->site = mem_strdup(p->site ? p->site : "");
	s->helo = mem_strdup(p->helo_name && *p->helo_name ? p->helo_name
		: "localhost");
	s->ops = *ops;
	s->owner = owner;
	s->id = id;
	smtp_reply_init(&s->rep);
	ev_init(&s->tm, timer_cb);
	s->tm.data = s;
	s->fd = socket(p->addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK |
		SOCK_CLOEXEC, 0);
	if (s->fd < 0) {
		int e = errno;
		free(s->mx_host);
		free(s->site);
		free(s->helo);
		free(s);
		errno = e;
		return NULL;
	}
	int one = 1;
	setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	ev_io_init(&s->rio, io_cb, s->fd, EV_READ);
	ev_io_init(&s->wio, io_cb, s->fd, EV_WRITE);
	s->rio.data = s->wio.data = s;
	s->st = ST_CONNECTING;
	bool failed = false;
	if (p->source && bind(s->fd, p->source, p->sourcelen) < 0)
		failed = true;
	if (!failed && connect(s->fd, p->addr, p->addrlen) < 0 &&
	    errno != EINPROGRESS)
		failed = true;
	if (failed) {
		/* Report from the loop, never from inside smtp_open(). */
		ev_timer_init(&s->reaper, start_fail_cb, 0, 0);
		s->reaper.data = s;
		ev_timer_start(loop, &s->reaper);
		return s;
	}
	enter(s, ST_CONNECTING);
	update_io(s);
	return s;
}

void smtp_kick(struct smtp_session *s)
{
	if (s->st == ST_IDLE && !s->ended)
		go_ready(s);
}

void smtp_close(struct smtp_session *s)
{
	if (s->ended)
		return;
	s->closing = true;
	if (s->st == ST_IDLE)
		go_ready(s);
}
