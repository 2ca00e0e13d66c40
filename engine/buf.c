/*
 * buf — growable byte buffer; see buf.h.
 */
#include "engine/buf.h"
#include "engine/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
buf_init(buf_t *b)
{
	b->p = NULL;
	b->len = b->cap = 0;
}

void
buf_free(buf_t *b)
{
	free(b->p);
	buf_init(b);
}

void
buf_reset(buf_t *b)
{
	b->len = 0;
	if (b->p)
		b->p[0] = '\0';
}

void
buf_reserve(buf_t *b, size_t extra)
{
	size_t need = b->len + extra + 1;
	if (need <= b->cap)
		return;
	size_t ncap = b->cap ? b->cap : 64;
	while (ncap < need)
		ncap *= 2;
	b->p = mem_realloc(b->p, ncap);
	b->cap = ncap;
	b->p[b->len] = '\0';
}

void
buf_add(buf_t *b, const void *p, size_t n)
{
	buf_reserve(b, n);
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void
buf_adds(buf_t *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

void
buf_addc(buf_t *b, char c)
{
	buf_reserve(b, 1);
	b->p[b->len++] = c;
	b->p[b->len] = '\0';
}

void
buf_vprintf(buf_t *b, const char *fmt, va_list ap)
{
	va_list aq;
	va_copy(aq, ap);
	buf_reserve(b, 64);
	int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
	if (n < 0) {
		va_end(aq);
		return;
	}
	if ((size_t)n >= b->cap - b->len) {
		buf_reserve(b, (size_t)n);
		vsnprintf(b->p + b->len, b->cap - b->len, fmt, aq);
	}
	va_end(aq);
	b->len += (size_t)n;
}

void
buf_printf(buf_t *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(b, fmt, ap);
	va_end(ap);
}

void
buf_consume(buf_t *b, size_t n)
{
	if (n >= b->len) {
		buf_reset(b);
		return;
	}
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
	b->p[b->len] = '\0';
}

void
buf_truncate(buf_t *b, size_t n)
{
	if (n < b->len) {
		b->len = n;
		b->p[n] = '\0';
	}
}

char *
buf_steal(buf_t *b, size_t *len)
{
	if (b->p == NULL)
		buf_reserve(b, 0);
	char *p = b->p;
	if (len)
		*len = b->len;
	buf_init(b);
	return p;
}

const char *
buf_cstr(buf_t *b)
{
	if (b->p == NULL)
		buf_reserve(b, 0);
	return b->p;
}
