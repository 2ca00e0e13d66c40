/*
 * evlog — see evlog.h. The file is opened O_APPEND and every batch is one
 * write(2), so concurrent writers (committer, control operations) never
 * interleave inside a line.
 */
#include "engine/evlog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/log.h"
#include "engine/mem.h"

struct evlog {
	int fd;
	bool own;
	bool failing;            /* an error was logged; log the recovery */
	pthread_mutex_t mu;
};

evlog *evlog_open(const char *path, char *err, size_t errlen)
{
	int fd;
	bool own = true;
	if (strcmp(path, "-") == 0) {
		fd = STDOUT_FILENO;
		own = false;
	} else if (!*path) {
		fd = open("/dev/null", O_WRONLY | O_CLOEXEC);   /* no event log */
	} else {
		fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (fd < 0) {
			snprintf(err, errlen, "event log %s: %s", path,
				strerror(errno));
			return NULL;
		}
	}
	evlog *e = mem_calloc(1, sizeof *e);
	e->fd = fd;
	e->own = own;
	pthread_mutex_init(&e->mu, NULL);
	return e;
}

void evlog_close(evlog *e)
{
	if (!e)
		return;
	if (e->own)
		close(e->fd);
	pthread_mutex_destroy(&e->mu);
	free(e);
}

/* Length of the valid UTF-8 sequence at s (0 when invalid). */
static size_t utf8_len(const unsigned char *s)
{
	if (s[0] < 0x80)
		return 1;
	size_t n = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3
		: s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

void evlog_json_str(buf_t *out, const char *s)
{
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	buf_addc(out, '"');
	while (*p) {
		const unsigned char *run = p;
		while (*p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
			p++;
		if (p > run)
			buf_add(out, run, (size_t)(p - run));
		if (!*p)
			break;
		if (*p == '"' || *p == '\\') {
			buf_addc(out, '\\');
			buf_addc(out, (char)*p++);
		} else if (*p < 0x20) {
			buf_printf(out, "\\u%04x", *p++);
		} else {
			size_t n = utf8_len(p);
			if (n == 0) {
				buf_adds(out, "\\ufffd");
				p++;
			} else {
				buf_add(out, p, n);
				p += n;
			}
		}
	}
	buf_addc(out, '"');
}

static void member_str(buf_t *out, const char *k, const char *v)
{
	if (!v)
		return;
	buf_printf(out, ",\"%s\":", k);
	evlog_json_str(out, v);
}

void evlog_format(buf_t *out, double ts, const struct evlog_event *ev)
{
	time_t sec = (time_t)ts;
	struct tm tm;
	gmtime_r(&sec, &tm);
	buf_printf(out, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"",
		tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		tm.tm_min, tm.tm_sec, (int)((ts - (double)sec) * 1000) % 1000);
	member_str(out, "event", ev->event);
	if (ev->campaign)
		buf_printf(out, ",\"campaign\":%u", ev->campaign);
	if (ev->msg)
		buf_printf(out, ",\"msg\":\"%016llx\"",
			(unsigned long long)ev->msg);
	member_str(out, "rcpt", ev->rcpt);
	member_str(out, "site", ev->site);
	member_str(out, "mx", ev->mx);
	if (ev->code)
		buf_printf(out, ",\"code\":%d", ev->code);
	if (ev->enhanced && *ev->enhanced)
		member_str(out, "enhanced", ev->enhanced);
	member_str(out, "reply", ev->reply);
	member_str(out, "category", ev->category);
	member_str(out, "tls", ev->tls);
	if (ev->attempt)
		buf_printf(out, ",\"attempt\":%u", ev->attempt);
	if (ev->ms >= 0)
		buf_printf(out, ",\"ms\":%.1f", ev->ms);
	if (ev->extra && *ev->extra) {
		buf_addc(out, ',');
		buf_adds(out, ev->extra);
	}
	buf_adds(out, "}\n");
}

int evlog_write(evlog *e, const char *lines, size_t len)
{
	int rc = 0;
	pthread_mutex_lock(&e->mu);
	while (len > 0) {
		ssize_t n = write(e->fd, lines, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (!e->failing)
				log_err("event log: write: %s", strerror(errno));
			e->failing = true;
			rc = -1;
			break;
		}
		lines += n;
		len -= (size_t)n;
	}
	if (rc == 0 && e->failing) {
		log_info("event log: writing again");
		e->failing = false;
	}
	pthread_mutex_unlock(&e->mu);
	return rc;
}

int evlog_emit(evlog *e, const struct evlog_event *ev)
{
	buf_t b = BUF_INIT;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	evlog_format(&b, (double)ts.tv_sec + ts.tv_nsec / 1e9, ev);
	int rc = evlog_write(e, b.p, b.len);
	buf_free(&b);
	return rc;
}
