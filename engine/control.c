/*
 * control — see control.h.
 *
 * Connection states: READING (waiting for a complete line), BUSY (a request
 * is with the owner; reading paused), CLOSING (flush the output, then close)
 * and DEAD (fd closed; the object lives while the owner holds it).
 */
#include "engine/control.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "engine/buf.h"
#include "engine/log.h"
#include "engine/mem.h"

enum conn_state { C_READING, C_BUSY, C_CLOSING, C_DEAD };

struct ctl_conn {
	ctl *srv;
	int fd;
	enum conn_state st;
	int refs;
	ev_io rio, wio;
	buf_t in, out;
	ctl_conn *next, *prev;
};

struct ctl {
	struct ev_loop *loop;
	int fd;
	char *path;
	ev_io lio;
	struct ctl_ops ops;
	void *arg;
	ctl_conn *conns;
};

static void conn_update(ctl_conn *c);
static void conn_process(ctl_conn *c);

static void conn_unlink(ctl_conn *c)
{
	ctl *s = c->srv;
	if (c->prev)
		c->prev->next = c->next;
	else if (s && s->conns == c)
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = c->prev = NULL;
}

static void conn_close(ctl_conn *c)
{
	if (c->st == C_DEAD)
		return;
	ev_io_stop(c->srv->loop, &c->rio);
	ev_io_stop(c->srv->loop, &c->wio);
	close(c->fd);
	c->fd = -1;
	c->st = C_DEAD;
	conn_unlink(c);
	buf_free(&c->in);
	buf_free(&c->out);
	if (c->refs == 0)
		free(c);
}

void ctl_conn_hold(ctl_conn *c)
{
	c->refs++;
}

void ctl_conn_release(ctl_conn *c)
{
	if (--c->refs == 0 && c->st == C_DEAD)
		free(c);
}

int ctl_conn_closed(const ctl_conn *c)
{
	return c->st == C_DEAD;
}

/* Derive the watchers from the state and the buffers. */
static void conn_update(ctl_conn *c)
{
	struct ev_loop *loop = c->srv->loop;
	if (c->st == C_DEAD)
		return;
	if (c->st == C_READING)
		ev_io_start(loop, &c->rio);
	else
		ev_io_stop(loop, &c->rio);
	if (c->out.len)
		ev_io_start(loop, &c->wio);
	else
		ev_io_stop(loop, &c->wio);
	if (c->st == C_CLOSING && c->out.len == 0)
		conn_close(c);
}

static void send_line(ctl_conn *c, json_t *j)
{
	if (c->st == C_DEAD) {
		json_decref(j);
		return;
	}
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	if (s) {
		buf_adds(&c->out, s);
		buf_addc(&c->out, '\n');
		free(s);
	}
}

void ctl_send(ctl_conn *c, json_t *msg)
{
	send_line(c, msg);
	conn_update(c);
}

void ctl_reply(ctl_conn *c, json_t *result)
{
	json_t *r = json_object();
	json_object_set_new(r, "ok", json_true());
	if (result) {
		json_object_update(r, result);
		json_decref(result);
	}
	send_line(c, r);
	if (c->st == C_BUSY)
		c->st = C_READING;
	conn_update(c);
	/* Pipelined requests already buffered. */
	if (c->st == C_READING)
		conn_process(c);
}

void ctl_error(ctl_conn *c, const char *code, const char *message,
	const char *where)
{
	json_t *r = json_object(), *e = json_object();
	json_object_set_new(r, "ok", json_false());
	json_object_set_new(e, "code", json_string(code));
	json_object_set_new(e, "message", json_string(message ? message : ""));
	if (where && *where)
		json_object_set_new(e, "where", json_string(where));
	json_object_set_new(r, "error", e);
	send_line(c, r);
	if (c->st == C_BUSY)
		c->st = C_READING;
	conn_update(c);
	if (c->st == C_READING)
		conn_process(c);
}

/* Hand complete lines to the owner, one at a time. */
static void conn_process(ctl_conn *c)
{
	while (c->st == C_READING) {
		char *nl = memchr(c->in.p, '\n', c->in.len);
		if (!nl) {
			if (c->in.len > CTL_LINE_MAX) {
				ctl_error(c, "too_large", "request line too long",
					NULL);
				c->st = C_CLOSING;
				conn_update(c);
			}
			return;
		}
		size_t n = (size_t)(nl - c->in.p);
		if (n == 0 || (n == 1 && c->in.p[0] == '\r')) {
			buf_consume(&c->in, n + 1);   /* blank line */
			continue;
		}
		json_error_t je;
		json_t *req = json_loadb(c->in.p, n, JSON_REJECT_DUPLICATES, &je);
		buf_consume(&c->in, n + 1);
		if (!req) {
			char where[64];
			snprintf(where, sizeof where, "request:%d:%d", je.line,
				je.column);
			ctl_error(c, "bad_request", je.text, where);
			continue;
		}
		json_t *op = json_object_get(req, "op");
		if (!json_is_object(req) || !json_is_string(op)) {
			json_decref(req);
			ctl_error(c, "bad_request",
				"a request is a JSON object with a string \"op\"",
				"op");
			continue;
		}
		c->st = C_BUSY;
		conn_update(c);
		ctl_conn_hold(c);
		c->srv->ops.request(c->srv->arg, c, json_string_value(op), req);
		ctl_conn_release(c);
	}
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	ctl_conn *c = w->data;
	(void)loop;
	(void)revents;
	buf_reserve(&c->in, 65536);
	ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len - 1);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* If the owner still holds it, the object lives on and the
		 * reply is dropped. */
		conn_close(c);
		return;
	}
	c->in.len += (size_t)n;
	c->in.p[c->in.len] = 0;
	ctl_conn_hold(c);
	conn_process(c);
	ctl_conn_release(c);
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	ctl_conn *c = w->data;
	(void)loop;
	(void)revents;
	ssize_t n = write(c->fd, c->out.p, c->out.len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0) {
		conn_close(c);
		return;
	}
	buf_consume(&c->out, (size_t)n);
	conn_update(c);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	ctl *s = w->data;
	(void)revents;
	int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR)
			log_warn("control: accept: %s", strerror(errno));
		return;
	}
	ctl_conn *c = mem_calloc(1, sizeof *c);
	c->srv = s;
	c->fd = fd;
	c->st = C_READING;
	ev_io_init(&c->rio, read_cb, fd, EV_READ);
	ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
	c->rio.data = c->wio.data = c;
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	(void)loop;
	conn_update(c);
}

static int fill_addr(struct sockaddr_un *sa, const char *path, char *err,
	size_t errlen)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof sa->sun_path) {
		snprintf(err, errlen, "socket path too long (max %zu): %s",
			sizeof sa->sun_path - 1, path);
		return -1;
	}
	strcpy(sa->sun_path, path);
	return 0;
}

ctl *ctl_new(struct ev_loop *loop, const char *path, const struct ctl_ops *ops,
	void *arg, char *err, size_t errlen)
{
	struct sockaddr_un sa;
	if (fill_addr(&sa, path, err, errlen) < 0)
		return NULL;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "control socket: %s", strerror(errno));
		return NULL;
	}
	/* A socket file nobody listens on is left over from a crash. */
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
		close(probe);
		close(fd);
		snprintf(err, errlen, "control socket %s: another engine is "
			"listening there", path);
		return NULL;
	}
	if (probe >= 0)
		close(probe);
	unlink(path);
	mode_t old = umask(007);
	int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
	umask(old);
	if (rc < 0 || listen(fd, 64) < 0) {
		snprintf(err, errlen, "control socket %s: %s", path,
			strerror(errno));
		close(fd);
		return NULL;
	}
	ctl *s = mem_calloc(1, sizeof *s);
	s->loop = loop;
	s->fd = fd;
	s->path = mem_strdup(path);
	s->ops = *ops;
	s->arg = arg;
	ev_io_init(&s->lio, accept_cb, fd, EV_READ);
	s->lio.data = s;
	ev_io_start(loop, &s->lio);
	return s;
}

void ctl_stop_listening(ctl *s)
{
	if (!s || s->fd < 0)
		return;
	ev_io_stop(s->loop, &s->lio);
	close(s->fd);
	s->fd = -1;
	unlink(s->path);
}

void ctl_free(ctl *s)
{
	if (!s)
		return;
	ctl_stop_listening(s);
	while (s->conns)
		conn_close(s->conns);
	free(s->path);
	free(s);
}

/* ---- client ---- */

int ctl_call(const char *path, json_t *req, json_t **reply, char *err,
	size_t errlen)
{
	struct sockaddr_un sa;
	*reply = NULL;
	if (fill_addr(&sa, path, err, errlen) < 0)
		return -1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		snprintf(err, errlen, "cannot connect to the engine at %s: %s "
			"(is `carteiro serve` running?)", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	char *s = json_dumps(req, JSON_COMPACT);
	buf_t b = BUF_INIT;
	buf_adds(&b, s);
	buf_addc(&b, '\n');
	free(s);
	size_t off = 0;
	while (off < b.len) {
		ssize_t n = write(fd, b.p + off, b.len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			snprintf(err, errlen, "sending to %s: %s", path,
				strerror(errno));
			goto fail;
		}
		off += (size_t)n;
	}
	buf_reset(&b);
	for (;;) {
		char *nl = b.len ? memchr(b.p, '\n', b.len) : NULL;
		if (nl) {
			json_error_t je;
			*reply = json_loadb(b.p, (size_t)(nl - b.p), 0, &je);
			if (!*reply) {
				snprintf(err, errlen, "bad reply from the engine: %s",
					je.text);
				goto fail;
			}
			break;
		}
		if (b.len > CTL_LINE_MAX) {
			snprintf(err, errlen, "reply too long");
			goto fail;
		}
		buf_reserve(&b, 65536);
		ssize_t n = read(fd, b.p + b.len, b.cap - b.len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			snprintf(err, errlen, "the engine closed the connection");
			goto fail;
		}
		b.len += (size_t)n;
	}
	buf_free(&b);
	close(fd);
	return 0;
fail:
	buf_free(&b);
	close(fd);
	return -1;
}
