/*
 * dotstuff — see dotstuff.h. A five-state machine over bytes; inside a line
 * memchr() skips to the next LF so the common case costs little per byte.
 */
#include <string.h>

#include "bench/dotstuff.h"

enum { ST_SOL = 0, ST_BODY, ST_CR, ST_DOT, ST_DOTCR };

void
dot_reset(dot_t *d)
{
	d->st = ST_SOL;
	d->bytes = 0;
}

static void
emit(dot_t *d, buf_t *out, const char *p, size_t n)
{
	if (out != NULL)
		buf_add(out, p, n);
	d->bytes += n;
}

size_t
dot_feed(dot_t *d, const char *p, size_t n, buf_t *out, int *done)
{
	size_t i = 0;

	*done = 0;
	while (i < n) {
		char c = p[i];
		switch (d->st) {
		case ST_SOL:
			if (c == '.') {
				d->st = ST_DOT;
				i++;
				break;
			}
			d->st = ST_BODY;
			/* fall through */
		case ST_BODY: {
			/* Emit the run up to and including the next LF. */
			const char *lf = memchr(p + i, '\n', n - i);
			size_t end = lf ? (size_t)(lf - p) + 1 : n;
			emit(d, out, p + i, end - i);
			i = end;
			d->st = lf ? ST_SOL : ST_BODY;
			break;
		}
		case ST_CR: /* unused: CR handled inside BODY runs */
			d->st = ST_BODY;
			break;
		case ST_DOT:
			if (c == '\r') {
				d->st = ST_DOTCR;
				i++;
			} else {
				/* Stuffed line: the dot is dropped, the rest kept. */
				d->st = ST_BODY;
			}
			break;
		case ST_DOTCR:
			if (c == '\n') {
				*done = 1;
				d->st = ST_SOL;
				return i + 1;
			}
			/* ".\r" then something else: keep the CR as content. */
			emit(d, out, "\r", 1);
			d->st = ST_BODY;
			break;
		}
	}
	return i;
}
