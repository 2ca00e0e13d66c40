/*
 * buf — the one growable byte buffer used everywhere (cf. Postfix's vstring).
 *
 * A buf_t owns its storage. It is always NUL-terminated after any append so
 * that it can be handed to string functions, but may also hold binary data:
 * `len` is authoritative. Allocation failure is fatal (see mem.h).
 */
#ifndef CARTEIRO_BUF_H
#define CARTEIRO_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct buf {
	char *p;     /* storage, NUL-terminated when cap > 0 */
	size_t len;  /* bytes in use */
	size_t cap;  /* bytes allocated */
} buf_t;

#define BUF_INIT { NULL, 0, 0 }

void buf_init(buf_t *b);
void buf_free(buf_t *b);
/* Forget the content, keep the storage. */
void buf_reset(buf_t *b);
/* Make room for `extra` more bytes (plus the terminator). */
void buf_reserve(buf_t *b, size_t extra);
void buf_add(buf_t *b, const void *p, size_t n);
void buf_adds(buf_t *b, const char *s);
void buf_addc(buf_t *b, char c);
void buf_printf(buf_t *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void buf_vprintf(buf_t *b, const char *fmt, va_list ap);
/* Drop the first `n` bytes (e.g. after a partial write). */
void buf_consume(buf_t *b, size_t n);
/* Shorten to `n` bytes. */
void buf_truncate(buf_t *b, size_t n);
/* Hand the storage to the caller (NUL-terminated) and reset `b`. */
char *buf_steal(buf_t *b, size_t *len);
/* Pointer to the (always valid) C string. */
const char *buf_cstr(buf_t *b);

#endif
