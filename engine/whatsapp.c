/*
 * whatsapp — WhatsApp Cloud API client: libcurl multi driven by libev.
 *
 * Contract (see whatsapp.h for the public one)
 *   A send is a struct wa_req. It lives on exactly one list: the FIFO
 *   (waiting for a rate token or a connection slot), `done` (refused before
 *   reaching the network: bad message, paused channel; completed from the
 *   loop), `flight` (its easy handle is in the multi) or `spare` (recycled,
 *   keeping its easy handle so connections and handles are reused).
 *   The client owns every req, every easy handle, the multi, the header list
 *   (which holds the token) and one ev_io per curl socket (struct wa_sock,
 *   created and stopped in sock_cb as curl asks).
 *
 *   Callbacks run only from loop callbacks: pump() (FIFO, done list) and
 *   check_done() (completed transfers). A req is recycled before its
 *   callback runs, and the result's strings live on that function's stack,
 *   so a callback may send or cancel freely.
 *
 *   Why the FIFO is ours and not curl's: with at most max_connections
 *   requests in the multi, CURLOPT_TIMEOUT_MS measures the request itself,
 *   not time spent waiting behind the rate limit.
 */
#include "engine/whatsapp.h"
#include "engine/log.h"
#include "engine/mem.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define DEFAULT_API_URL "https://graph.facebook.com/v21.0"
#define REPLY_MAX (64u << 10)          /* a Graph reply is a few hundred bytes */
#define TOKEN_MAX 4096
#define RETRY_AFTER_MAX_MS (86400000ull)

enum req_list { L_NONE, L_FIFO, L_DONE, L_FLIGHT, L_SPARE };

struct wa_req {
	struct wa_req *prev, *next;
	enum req_list on;
	wa_client *c;
	CURL *easy;
	uint64_t id;
	wa_cb cb;
	void *arg;
	buf_t body;
	buf_t reply;
	uint64_t retry_after_ms;        /* from Retry-After; 0 = none */
	enum wa_kind done_kind;         /* for L_DONE */
	char done_msg[WA_MESSAGE_MAX];
	char errbuf[CURL_ERROR_SIZE];
};

struct req_list_head {
	struct wa_req *head, *tail;
	size_t n;
};

struct wa_sock {
	ev_io io;
	wa_client *c;
	curl_socket_t fd;
	struct wa_sock *prev, *next;
};

struct wa_client {
	struct ev_loop *loop;
	CURLM *multi;
	struct curl_slist *headers;     /* holds the token: never logged */
	char *token;
	char *url;                      /* {api_url}/{phone_number_id}/messages */
	char *ca_file;
	unsigned max_connections;
	uint64_t timeout_ms;
	unsigned max_queue;
	uint64_t ecosystem_retry_ms;
	double (*now)(void *);
	void *now_arg;

	double rate;                    /* 0 = unlimited */
	struct wa_bucket bucket;
	double hold_until;              /* rate-limited by the API until then */

	bool paused;
	uint64_t next_id;
	struct req_list_head fifo, done, flight, spare;
	struct wa_sock *socks;
	ev_timer curl_timer;            /* CURLMOPT_TIMERFUNCTION */
	ev_timer pump_timer;            /* FIFO: tokens, hold, done list */
	struct wa_stats st;
};

/* ---- lists ------------------------------------------------------------- */

static struct req_list_head *
head_of(wa_client *c, enum req_list l)
{
	switch (l) {
	case L_FIFO: return &c->fifo;
	case L_DONE: return &c->done;
	case L_FLIGHT: return &c->flight;
	case L_SPARE: return &c->spare;
	case L_NONE: break;
	}
	abort();
}

static void
list_put(wa_client *c, struct wa_req *r, enum req_list l)
{
	struct req_list_head *h = head_of(c, l);
	r->on = l;
	r->next = NULL;
	r->prev = h->tail;
	if (h->tail)
		h->tail->next = r;
	else
		h->head = r;
	h->tail = r;
	h->n++;
}

static void
list_del(wa_client *c, struct wa_req *r)
{
	struct req_list_head *h = head_of(c, r->on);
	if (r->prev)
		r->prev->next = r->next;
	else
		h->head = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		h->tail = r->prev;
	h->n--;
	r->on = L_NONE;
	r->prev = r->next = NULL;
}

static void
req_free(struct wa_req *r)
{
	if (r->easy)
		curl_easy_cleanup(r->easy);
	buf_free(&r->body);
	buf_free(&r->reply);
	free(r);
}

/* Keep a few spare reqs (with their easy handles) for the next sends. */
static void
recycle(wa_client *c, struct wa_req *r)
{
	if (r->on != L_NONE)
		list_del(c, r);
	r->cb = NULL;
	r->arg = NULL;
	r->id = 0;
	if (c->spare.n >= (size_t)c->max_connections * 2) {
		req_free(r);
		return;
	}
	buf_reset(&r->body);
	buf_reset(&r->reply);
	list_put(c, r, L_SPARE);
}

/* ---- text helpers ------------------------------------------------------ */

/*
 * Copy untrusted text into a bounded printable-ASCII string: control
 * characters become spaces, other bytes '?', and every occurrence of
 * `mask` (the token) becomes "***" before anything is cut.
 */
static void
sanitize(char *dst, size_t dstlen, const char *src, size_t len, const char *mask)
{
	size_t masklen = mask ? strlen(mask) : 0, o = 0;
	for (size_t i = 0; i < len && o + 1 < dstlen;) {
		if (masklen && len - i >= masklen && memcmp(src + i, mask, masklen) == 0) {
			for (const char *s = "***"; *s && o + 1 < dstlen; s++)
				dst[o++] = *s;
			i += masklen;
			continue;
		}
		unsigned char ch = (unsigned char)src[i++];
		if (ch < 0x20 || ch == 0x7f)
			ch = ' ';
		else if (ch >= 0x80)
			ch = '?';
		dst[o++] = (char)ch;
	}
	if (dstlen)
		dst[o] = '\0';
}

static bool
all_digits(const char *s, size_t min, size_t max)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (!isdigit((unsigned char)s[n]))
			return false;
	return n >= min && n <= max;
}

/* Code points of valid UTF-8 (jansson has already checked validity). */
static size_t
utf8_len(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			n++;
	return n;
}

/* A token goes into a header line: visible ASCII only, no spaces. */
static int
check_token(const char *t, char *err, size_t errlen)
{
	size_t n = t ? strlen(t) : 0;
	if (n == 0) {
		snprintf(err, errlen, "whatsapp: token is empty");
		return -1;
	}
	if (n > TOKEN_MAX) {
		snprintf(err, errlen, "whatsapp: token is longer than %u bytes", TOKEN_MAX);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)t[i];
		if (ch <= 0x20 || ch >= 0x7f) {
			/* Say where, never what. */
			snprintf(err, errlen, "whatsapp: token has a forbidden character "
			    "(space, control or non-ASCII) at byte %zu", i + 1);
			return -1;
		}
	}
	return 0;
}

/* ---- pure parts -------------------------------------------------------- */

const char *
wa_kind_name(enum wa_kind k)
{
	static const char *const names[] = {
		[WA_SENT] = "sent", [WA_RETRY] = "retry", [WA_RETRY_LATE] = "retry_late",
		[WA_FAILED] = "failed", [WA_CHANNEL_PAUSED] = "channel_paused",
	};
	return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

enum wa_kind
wa_classify(long http_status, long code, long subcode)
{
	(void)subcode;  /* no subcode changes the class today; kept for the table */
	if (http_status >= 200 && http_status < 300 && code == 0)
		return WA_SENT;
	/* The account, not the contact: every message would fail the same way. */
	if (code == 190 || http_status == 401 || code == 10 || code == 3 ||
	    (code >= 200 && code <= 299) || code == 131031 || code == 131042 ||
	    code == 133010)
		return WA_CHANNEL_PAUSED;
	switch (code) {
	case 131049:
		return WA_RETRY_LATE;
	case 4: case 80007: case 130429: case 131056:   /* throughput / rate */
	case 1: case 2: case 131000: case 131016: case 133004: /* service trouble */
		return WA_RETRY;
	case 100: case 131008: case 131009: case 131021: case 131026:
	case 131047: case 131050: case 131051: case 131052: case 131053:
		return WA_FAILED;
	default:
		break;
	}
	if (code >= 132000 && code <= 132999)   /* template errors */
		return WA_FAILED;
	if (http_status == 429 || http_status >= 500 || http_status == 0 ||
	    http_status == 408)
		return WA_RETRY;
	if (http_status >= 400)
		return WA_FAILED;
	/* 2xx with an error code, or an unexpected 1xx/3xx */
	return http_status >= 200 && http_status < 300 ? WA_FAILED : WA_RETRY;
}

static bool
is_throughput_limit(long http_status, long code)
{
	return http_status == 429 || code == 4 || code == 80007 || code == 130429;
}

uint64_t
wa_default_delay_ms(long http_status, long code)
{
	if (code == 131056)          /* pair rate limit: this recipient, minutes */
		return 60000;
	if (is_throughput_limit(http_status, code))
		return 2000;
	return 5000;
}

int
wa_build_body(const struct wa_msg *m, buf_t *out, char *err, size_t errlen)
{
	json_t *root = NULL, *params, *comp;
	if (m->to == NULL || !all_digits(m->to, 7, 15)) {
		snprintf(err, errlen, "whatsapp: to: not an E.164 number (7-15 digits, no '+')");
		return -1;
	}
	size_t tn = m->template_name ? strlen(m->template_name) : 0;
	if (tn == 0 || tn > 512 ||
	    strspn(m->template_name, "abcdefghijklmnopqrstuvwxyz0123456789_") != tn) {
		snprintf(err, errlen, "whatsapp: template: name must be 1-512 of a-z, 0-9, _");
		return -1;
	}
	size_t ln = m->language ? strlen(m->language) : 0;
	if (ln < 2 || ln > 16 || strspn(m->language,
	    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_") != ln) {
		snprintf(err, errlen, "whatsapp: language: not a language code (e.g. pt_BR)");
		return -1;
	}
	if (m->nparams > WA_PARAMS_MAX) {
		snprintf(err, errlen, "whatsapp: %zu params, at most %d", m->nparams, WA_PARAMS_MAX);
		return -1;
	}
	root = json_pack("{s:s, s:s, s:s, s:{s:s, s:{s:s}}}",
	    "messaging_product", "whatsapp", "to", m->to, "type", "template",
	    "template", "name", m->template_name, "language", "code", m->language);
	if (root == NULL)
		goto oom;
	if (m->nparams > 0) {
		params = json_array();
		comp = json_pack("[{s:s, s:o}]", "type", "body", "parameters", params);
		if (comp == NULL)
			goto oom;
		json_object_set_new(json_object_get(root, "template"), "components", comp);
		for (size_t i = 0; i < m->nparams; i++) {
			const char *p = m->params[i] ? m->params[i] : "";
			json_t *s = json_string(p);  /* NULL on invalid UTF-8 */
			if (s == NULL) {
				snprintf(err, errlen, "whatsapp: param %zu: not valid UTF-8", i + 1);
				goto fail;
			}
			size_t cp = utf8_len(p);
			if (cp == 0 || cp > WA_PARAM_MAX) {
				json_decref(s);
				if (cp == 0)
					snprintf(err, errlen, "whatsapp: param %zu: empty (the Cloud "
					    "API refuses empty parameters)", i + 1);
				else
					snprintf(err, errlen, "whatsapp: param %zu: %zu characters, "
					    "the Cloud API allows %d", i + 1, cp, WA_PARAM_MAX);
				goto fail;
			}
			json_array_append_new(params, json_pack("{s:s, s:o}", "type", "text",
			    "text", s));
		}
	}
	char *txt = json_dumps(root, JSON_COMPACT);
	if (txt == NULL)
		goto oom;
	buf_reset(out);
	buf_adds(out, txt);
	free(txt);
	json_decref(root);
	return 0;
oom:
	snprintf(err, errlen, "whatsapp: out of memory building the body");
fail:
	json_decref(root);
	return -1;
}

void
wa_bucket_init(struct wa_bucket *b, double rate, double burst, double now)
{
	b->rate = rate;
	b->burst = burst < 1 ? 1 : burst;
	b->tokens = b->burst;
	b->last = now;
}

double
wa_bucket_take(struct wa_bucket *b, double now)
{
	if (now > b->last) {   /* a clock that goes back adds nothing */
		b->tokens += (now - b->last) * b->rate;
		if (b->tokens > b->burst)
			b->tokens = b->burst;
		b->last = now;
	}
	if (b->tokens >= 1) {
		b->tokens -= 1;
		return 0;
	}
	return (1 - b->tokens) / b->rate;
}

static bool
host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;
	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	size_t n = strlen(host);
	if (n > 2 && host[0] == '[' && host[n - 1] == ']') {
		char tmp[64];
		if (n - 2 >= sizeof tmp)
			return false;
		memcpy(tmp, host + 1, n - 2);
		tmp[n - 2] = '\0';
		return inet_pton(AF_INET6, tmp, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
	}
	return false;
}

int
wa_check_url(const char *url, char *err, size_t errlen)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *user = NULL, *query = NULL;
	int rc = -1;
	if (u == NULL) {
		snprintf(err, errlen, "whatsapp: api_url: out of memory");
		return -1;
	}
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		snprintf(err, errlen, "whatsapp: api_url: not a URL");
		goto out;
	}
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
	    curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK) {
		snprintf(err, errlen, "whatsapp: api_url: no user, password or query allowed");
		goto out;
	}
	if (strcmp(scheme, "https") == 0)
		rc = 0;
	else if (strcmp(scheme, "http") == 0) {
		if (host_is_loopback(host))
			rc = 0;
		else
			snprintf(err, errlen, "whatsapp: api_url: plain http is allowed only "
			    "for a loopback host (127.0.0.0/8, ::1, localhost), not %.64s; "
			    "use https", host);
	} else
		snprintf(err, errlen, "whatsapp: api_url: scheme %.16s is not https", scheme);
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(query);
	curl_url_cleanup(u);
	return rc;
}

static const char *
jstr(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

static void
parse_reply(long http_status, const char *body, size_t len, struct wa_result *r,
    char scratch[3][WA_MESSAGE_MAX], const char *mask)
{
	scratch[0][0] = scratch[1][0] = scratch[2][0] = '\0';
	r->http_status = http_status;
	r->code = r->subcode = 0;
	r->message = scratch[0];
	r->message_id = scratch[1];
	r->wa_id = scratch[2];
	json_t *root = len ? json_loadb(body, len, 0, NULL) : NULL;
	json_t *e = json_object_get(root, "error");
	if (json_is_object(e)) {
		json_t *v = json_object_get(e, "code");
		r->code = json_is_integer(v) ? (long)json_integer_value(v) : 0;
		v = json_object_get(e, "error_subcode");
		r->subcode = json_is_integer(v) ? (long)json_integer_value(v) : 0;
		const char *msg = jstr(e, "message");
		const char *det = jstr(json_object_get(e, "error_data"), "details");
		buf_t b = BUF_INIT;
		buf_printf(&b, "%s%s%s", msg, *det ? ": " : "", det);
		sanitize(scratch[0], WA_MESSAGE_MAX, b.p ? b.p : "", b.len, mask);
		buf_free(&b);
	} else if (http_status >= 200 && http_status < 300) {
		const char *id = jstr(json_array_get(json_object_get(root, "messages"), 0), "id");
		const char *wa = jstr(json_array_get(json_object_get(root, "contacts"), 0), "wa_id");
		sanitize(scratch[1], WA_MESSAGE_MAX, id, strlen(id), mask);
		sanitize(scratch[2], WA_MESSAGE_MAX, wa, strlen(wa), mask);
	} else {
		/* Not Graph's shape (a proxy's page): keep a bounded excerpt. */
		snprintf(scratch[0], WA_MESSAGE_MAX, "HTTP %ld: ", http_status);
		size_t o = strlen(scratch[0]);
		sanitize(scratch[0] + o, WA_MESSAGE_MAX - o, body, len > 160 ? 160 : len, mask);
	}
	r->kind = wa_classify(http_status, r->code, r->subcode);
	if (r->kind == WA_SENT && scratch[1][0] == '\0') {
		r->kind = WA_FAILED;
		snprintf(scratch[0], WA_MESSAGE_MAX, "HTTP %ld without messages[0].id: "
		    "not retried, it may have been accepted", http_status);
	}
	json_decref(root);
}

void
wa_parse_reply(long http_status, const char *body, size_t len,
    struct wa_result *r, char scratch[3][WA_MESSAGE_MAX])
{
	memset(r, 0, sizeof *r);
	parse_reply(http_status, body, len, r, scratch, NULL);
}

/* ---- the client: curl callbacks ---------------------------------------- */

static double
now_s(wa_client *c)
{
	return c->now ? c->now(c->now_arg) : ev_now(c->loop);
}

static void pump(wa_client *c);
static void check_done(wa_client *c);

static void
pump_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	pump(w->data);
}

/* Run pump() from the loop as soon as possible (never from inside a caller). */
static void
kick(wa_client *c)
{
	if (ev_is_active(&c->pump_timer) && ev_timer_remaining(c->loop, &c->pump_timer) <= 0)
		return;
	ev_timer_stop(c->loop, &c->pump_timer);
	ev_timer_set(&c->pump_timer, 0., 0.);
	ev_timer_start(c->loop, &c->pump_timer);
}

static void
io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	struct wa_sock *ws = (struct wa_sock *)w;
	wa_client *c = ws->c;
	int action = (revents & EV_READ ? CURL_CSELECT_IN : 0) |
	    (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
	int running;
	/* ws may be freed inside (CURL_POLL_REMOVE): not touched afterwards. */
	curl_multi_socket_action(c->multi, ws->fd, action, &running);
	check_done(c);
}

static void
curl_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	wa_client *c = w->data;
	int running;
	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(c);
}

static int
sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	(void)easy;
	wa_client *c = userp;
	struct wa_sock *ws = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (ws) {
			ev_io_stop(c->loop, &ws->io);
			if (ws->prev)
				ws->prev->next = ws->next;
			else
				c->socks = ws->next;
			if (ws->next)
				ws->next->prev = ws->prev;
			free(ws);
			curl_multi_assign(c->multi, s, NULL);
		}
		return 0;
	}
	int ev = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
	if (ws == NULL) {
		ws = mem_calloc(1, sizeof *ws);
		ws->c = c;
		ws->fd = s;
		ws->next = c->socks;
		if (c->socks)
			c->socks->prev = ws;
		c->socks = ws;
		ev_io_init(&ws->io, io_cb, s, ev);
		curl_multi_assign(c->multi, s, ws);
	} else {
		ev_io_stop(c->loop, &ws->io);
		ev_io_set(&ws->io, s, ev);
	}
	if (ev)
		ev_io_start(c->loop, &ws->io);
	return 0;
}

static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	(void)multi;
	wa_client *c = userp;
	ev_timer_stop(c->loop, &c->curl_timer);
	if (timeout_ms >= 0) {
		ev_timer_set(&c->curl_timer, (double)timeout_ms / 1000., 0.);
		ev_timer_start(c->loop, &c->curl_timer);
	}
	return 0;
}

static size_t
write_cb(char *p, size_t size, size_t n, void *userp)
{
	struct wa_req *r = userp;
	size_t len = size * n;
	if (r->reply.len + len > REPLY_MAX)
		return 0;  /* CURLE_WRITE_ERROR: a reply this big is not Graph's */
	buf_add(&r->reply, p, len);
	return len;
}

static size_t
header_cb(char *p, size_t size, size_t n, void *userp)
{
	struct wa_req *r = userp;
	size_t len = size * n;
	static const char name[] = "retry-after:";
	if (len > sizeof name - 1 && len < 128 && strncasecmp(p, name, sizeof name - 1) == 0) {
		char v[128];
		size_t vl = len - (sizeof name - 1);
		memcpy(v, p + sizeof name - 1, vl);
		v[vl] = '\0';
		char *s = v + strspn(v, " \t");
		s[strcspn(s, "\r\n")] = '\0';
		uint64_t ms = 0;
		if (*s && strspn(s, "0123456789") == strlen(s)) {
			unsigned long long sec = strtoull(s, NULL, 10);
			ms = sec >= RETRY_AFTER_MAX_MS / 1000 ? RETRY_AFTER_MAX_MS : sec * 1000;
		} else if (*s) {
			time_t t = curl_getdate(s, NULL), nw = time(NULL);
			if (t > nw)
				ms = (uint64_t)(t - nw) * 1000;
		}
		if (ms > RETRY_AFTER_MAX_MS)
			ms = RETRY_AFTER_MAX_MS;
		r->retry_after_ms = ms ? ms : 1;
	}
	return len;
}

/* ---- the client: sending ----------------------------------------------- */

static int
setup_easy(wa_client *c, struct wa_req *r)
{
	CURL *e = curl_easy_init();
	if (e == NULL)
		return -1;
	r->easy = e;
	curl_easy_setopt(e, CURLOPT_URL, c->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, r);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_POST, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	/* Graph speaks HTTP/2: wait to multiplex rather than open a connection
	 * per request of the first burst. */
	curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)(c->timeout_ms < 10000 ? c->timeout_ms : 10000));
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if (c->ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "carteiro/0.1");
	return 0;
}

/* Hand a result to the owner of `r`; `r` is recycled first. */
static void
finish(wa_client *c, struct wa_req *r, const struct wa_result *res)
{
	wa_cb cb = r->cb;
	void *arg = r->arg;
	uint64_t id = r->id;
	switch (res->kind) {
	case WA_SENT: c->st.sent++; break;
	case WA_RETRY: case WA_RETRY_LATE: c->st.retried++; break;
	case WA_FAILED: c->st.failed++; break;
	case WA_CHANNEL_PAUSED: c->st.paused++; break;
	}
	recycle(c, r);
	if (cb)
		cb(arg, id, res);
}

static void
finish_local(wa_client *c, struct wa_req *r, enum wa_kind kind, const char *msg)
{
	struct wa_result res = {
		.kind = kind, .message = msg, .message_id = "", .wa_id = "",
		.code = kind == WA_CHANNEL_PAUSED ? 190 : 0,
	};
	if (kind == WA_RETRY)
		res.retry_after_ms = wa_default_delay_ms(0, 0);
	finish(c, r, &res);
}

static void
start(wa_client *c, struct wa_req *r)
{
	if (r->easy == NULL && setup_easy(c, r) < 0) {
		finish_local(c, r, WA_RETRY, "whatsapp: cannot create a curl handle");
		return;
	}
	curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, c->headers);
	curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->body.p);
	curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE, (long)r->body.len);
	buf_reset(&r->reply);
	r->retry_after_ms = 0;
	r->errbuf[0] = '\0';
	CURLMcode mc = curl_multi_add_handle(c->multi, r->easy);
	if (mc != CURLM_OK) {
		char msg[WA_MESSAGE_MAX];
		snprintf(msg, sizeof msg, "whatsapp: curl_multi_add_handle: %s",
		    curl_multi_strerror(mc));
		finish_local(c, r, WA_RETRY, msg);
		return;
	}
	list_put(c, r, L_FLIGHT);
}

static void
complete(wa_client *c, struct wa_req *r, CURLcode cc)
{
	long status = 0, connects = 0;
	curl_off_t us = 0;
	char scratch[3][WA_MESSAGE_MAX];
	struct wa_result res;

	curl_multi_remove_handle(c->multi, r->easy);
	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &connects);
	curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &us);
	c->st.requests++;
	c->st.connects += (uint64_t)connects;
	memset(&res, 0, sizeof res);
	if (cc != CURLE_OK) {
		char raw[WA_MESSAGE_MAX + CURL_ERROR_SIZE];
		snprintf(raw, sizeof raw, "%s%s%s", curl_easy_strerror(cc),
		    r->errbuf[0] ? ": " : "", r->errbuf);
		scratch[1][0] = scratch[2][0] = '\0';
		sanitize(scratch[0], WA_MESSAGE_MAX, raw, strlen(raw), c->token);
		res.kind = WA_RETRY;
		res.http_status = 0;   /* the reply, if any, was not complete */
		res.message = scratch[0];
		res.message_id = scratch[1];
		res.wa_id = scratch[2];
	} else {
		parse_reply(status, r->reply.p ? r->reply.p : "", r->reply.len, &res,
		    scratch, c->token);
	}
	res.ms = (uint64_t)us / 1000;
	if (res.kind == WA_RETRY || res.kind == WA_RETRY_LATE) {
		if (res.kind == WA_RETRY_LATE)
			res.retry_after_ms = c->ecosystem_retry_ms;
		else if (r->retry_after_ms)
			res.retry_after_ms = r->retry_after_ms;
		else
			res.retry_after_ms = wa_default_delay_ms(res.http_status, res.code);
		if (res.kind == WA_RETRY && is_throughput_limit(res.http_status, res.code)) {
			/* A hostile Retry-After may say a day; the FIFO waits 5 min at
			 * most, the message itself keeps the full suggestion. */
			uint64_t hold = res.retry_after_ms < 300000 ? res.retry_after_ms : 300000;
			double until = now_s(c) + (double)hold / 1000.;
			if (until > c->hold_until)
				c->hold_until = until;
		}
	}
	if (res.kind == WA_CHANNEL_PAUSED && !c->paused) {
		c->paused = true;
		log_warn("whatsapp: channel paused: HTTP %ld, code %ld: %s",
		    res.http_status, res.code, res.message);
	}
	finish(c, r, &res);
}

static void
check_done(wa_client *c)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
		if (m->msg != CURLMSG_DONE)
			continue;
		struct wa_req *r = NULL;
		CURLcode cc = m->data.result;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
		complete(c, r, cc);
	}
	pump(c);
}

static void
pump(wa_client *c)
{
	struct wa_req *r;
	/* Refused before the network, or after a pause: answer now. */
	while ((r = c->done.head) != NULL) {
		list_del(c, r);
		finish_local(c, r, r->done_kind, r->done_msg);
	}
	if (c->paused) {
		while ((r = c->fifo.head) != NULL) {
			list_del(c, r);
			finish_local(c, r, WA_CHANNEL_PAUSED,
			    "whatsapp: channel paused (access token rejected)");
		}
		return;
	}
	double now = now_s(c);
	double wait = 0;
	while (c->fifo.head && !c->paused) {
		if (now < c->hold_until) {
			wait = c->hold_until - now;
			break;
		}
		if (c->flight.n >= c->max_connections)
			break;       /* a completion pumps again */
		if (c->rate > 0 && (wait = wa_bucket_take(&c->bucket, now)) > 0) {
			if (wait < 0.001)
				wait = 0.001;   /* no busy loop on a sliver of a token */
			break;
		}
		r = c->fifo.head;
		list_del(c, r);
		start(c, r);
	}
	if (wait > 0) {
		ev_timer_stop(c->loop, &c->pump_timer);
		ev_timer_set(&c->pump_timer, wait, 0.);
		ev_timer_start(c->loop, &c->pump_timer);
	}
}

/* ---- the client: public ------------------------------------------------ */

static int
set_headers(wa_client *c, const char *token, char *err, size_t errlen)
{
	if (check_token(token, err, errlen) < 0)
		return -1;
	buf_t b = BUF_INIT;
	buf_printf(&b, "Authorization: Bearer %s", token);
	struct curl_slist *h = curl_slist_append(NULL, b.p);
	if (h)
		h = curl_slist_append(h, "Content-Type: application/json");
	struct curl_slist *h2 = h ? curl_slist_append(h, "Expect:") : NULL;
	/* Wipe the copy of the token before freeing it. */
	memset(b.p, 0, b.len);
	buf_free(&b);
	if (h2 == NULL) {
		curl_slist_free_all(h);
		snprintf(err, errlen, "whatsapp: out of memory");
		return -1;
	}
	curl_slist_free_all(c->headers);
	c->headers = h2;
	if (c->token) {
		memset(c->token, 0, strlen(c->token));
		free(c->token);
	}
	c->token = mem_strdup(token);
	return 0;
}

wa_client *
wa_new(struct ev_loop *loop, const struct wa_config *cfg, char *err, size_t errlen)
{
	const char *api = cfg->api_url && *cfg->api_url ? cfg->api_url : DEFAULT_API_URL;
	if (wa_check_url(api, err, errlen) < 0)
		return NULL;
	if (cfg->phone_number_id == NULL || !all_digits(cfg->phone_number_id, 1, 32)) {
		snprintf(err, errlen, "whatsapp: phone_number_id: must be 1-32 digits");
		return NULL;
	}
	if (cfg->rate < 0 || cfg->rate > 1e6) {
		snprintf(err, errlen, "whatsapp: rate: must be 0 (unlimited) to 1000000/s");
		return NULL;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(err, errlen, "whatsapp: curl_global_init failed");
		return NULL;
	}
	wa_client *c = mem_calloc(1, sizeof *c);
	c->loop = loop;
	if (set_headers(c, cfg->token, err, errlen) < 0)
		goto fail;
	buf_t u = BUF_INIT;
	size_t al = strlen(api);
	while (al > 0 && api[al - 1] == '/')
		al--;
	buf_add(&u, api, al);
	buf_printf(&u, "/%s/messages", cfg->phone_number_id);
	c->url = buf_steal(&u, NULL);
	c->ca_file = cfg->ca_file && *cfg->ca_file ? mem_strdup(cfg->ca_file) : NULL;
	c->max_connections = cfg->max_connections ? cfg->max_connections : 16;
	c->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 30000;
	c->max_queue = cfg->max_queue ? cfg->max_queue : 10000;
	c->ecosystem_retry_ms = cfg->ecosystem_retry_ms ? cfg->ecosystem_retry_ms : 86400000;
	c->now = cfg->now;
	c->now_arg = cfg->now_arg;
	c->rate = cfg->rate;
	wa_bucket_init(&c->bucket, c->rate, c->rate / 10 > 1 ? c->rate / 10 : 1, now_s(c));
	c->next_id = 1;
	c->multi = curl_multi_init();
	if (c->multi == NULL) {
		snprintf(err, errlen, "whatsapp: curl_multi_init failed");
		goto fail;
	}
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)c->max_connections);
	curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)c->max_connections);
	ev_timer_init(&c->curl_timer, curl_timer_cb, 0., 0.);
	c->curl_timer.data = c;
	ev_timer_init(&c->pump_timer, pump_cb, 0., 0.);
	c->pump_timer.data = c;
	return c;
fail:
	wa_free(c);
	return NULL;
}

static void
free_list(wa_client *c, struct req_list_head *h)
{
	struct wa_req *r;
	while ((r = h->head) != NULL) {
		list_del(c, r);
		if (r->easy && h == &c->flight)
			curl_multi_remove_handle(c->multi, r->easy);
		req_free(r);
	}
}

void
wa_free(wa_client *c)
{
	if (c == NULL)
		return;
	ev_timer_stop(c->loop, &c->pump_timer);
	ev_timer_stop(c->loop, &c->curl_timer);
	free_list(c, &c->flight);
	free_list(c, &c->fifo);
	free_list(c, &c->done);
	free_list(c, &c->spare);
	if (c->multi)
		curl_multi_cleanup(c->multi);
	while (c->socks) {
		struct wa_sock *ws = c->socks;
		c->socks = ws->next;
		ev_io_stop(c->loop, &ws->io);
		free(ws);
	}
	ev_timer_stop(c->loop, &c->curl_timer);
	curl_slist_free_all(c->headers);
	if (c->token) {
		memset(c->token, 0, strlen(c->token));
		free(c->token);
	}
	free(c->url);
	free(c->ca_file);
	free(c);
	curl_global_cleanup();
}

uint64_t
wa_send(wa_client *c, const struct wa_msg *m, wa_cb cb, void *arg)
{
	if (c->fifo.n + c->done.n >= c->max_queue)
		return 0;
	struct wa_req *r = c->spare.head;
	if (r)
		list_del(c, r);
	else {
		r = mem_calloc(1, sizeof *r);
		r->c = c;
	}
	r->id = c->next_id++;
	r->cb = cb;
	r->arg = arg;
	if (wa_build_body(m, &r->body, r->done_msg, sizeof r->done_msg) < 0) {
		r->done_kind = WA_FAILED;
		list_put(c, r, L_DONE);
	} else if (c->paused) {
		r->done_kind = WA_CHANNEL_PAUSED;
		snprintf(r->done_msg, sizeof r->done_msg,
		    "whatsapp: channel paused (access token rejected)");
		list_put(c, r, L_DONE);
	} else
		list_put(c, r, L_FIFO);
	if (!ev_is_active(&c->pump_timer) || c->done.n)
		kick(c);
	return r->id;
}

int
wa_cancel(wa_client *c, uint64_t id)
{
	struct req_list_head *lists[] = { &c->fifo, &c->done, &c->flight };
	for (size_t i = 0; i < 3; i++)
		for (struct wa_req *r = lists[i]->head; r; r = r->next)
			if (r->id == id) {
				if (r->on == L_FLIGHT)
					curl_multi_remove_handle(c->multi, r->easy);
				recycle(c, r);
				return 0;
			}
	return -1;
}

int
wa_set_token(wa_client *c, const char *token, char *err, size_t errlen)
{
	if (set_headers(c, token, err, errlen) < 0)
		return -1;
	if (c->paused)
		log_info("whatsapp: new access token installed; channel resumed");
	c->paused = false;
	kick(c);
	return 0;
}

int
wa_paused(const wa_client *c)
{
	return c->paused;
}

void
wa_get_stats(const wa_client *c, struct wa_stats *st)
{
	*st = c->st;
	st->queued = c->fifo.n + c->done.n;
	st->in_flight = c->flight.n;
}
