/*
 * log — stderr diagnostics; see log.h.
 *
 * The level is process-wide state set once at start-up (an atomic, so that
 * worker threads read it safely). It is the only such global in carteiro and
 * it carries no behaviour beyond filtering.
 */
#include "engine/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Atomic int log_level_cur = LOG_INFO;

static const char *const log_names[] = { "error", "warn", "info", "debug" };

void
log_set_level(enum log_level lvl)
{
	atomic_store(&log_level_cur, (int)lvl);
}

enum log_level
log_get_level(void)
{
	return (enum log_level)atomic_load(&log_level_cur);
}

int
log_level_parse(const char *s)
{
	for (int i = 0; i <= LOG_DEBUG; i++)
		if (strcmp(s, log_names[i]) == 0)
			return i;
	return -1;
}

void
log_msg(enum log_level lvl, const char *fmt, ...)
{
	if ((int)lvl > atomic_load(&log_level_cur))
		return;
	char line[2048];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof line,
	    "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ carteiro[%s]: ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, log_names[lvl]);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof line)
		vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	va_end(ap);
	/* One fputs per line: stdio locks the stream, so lines never interleave. */
	size_t len = strlen(line);
	if (len + 1 < sizeof line) {
		line[len] = '\n';
		line[len + 1] = '\0';
	} else {
		line[sizeof line - 2] = '\n';
	}
	fputs(line, stderr);
}
